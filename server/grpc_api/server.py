"""The gRPC server beside the HTTP one, in the same process and on the same engine:
`hotswap.v1.Inference`, `hotswap.v1.Adapters`, the standard health service and reflection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.auth import AuthError, KeyRing, Role
from server.grpc_api.adapters import AdaptersServicer
from server.grpc_api.gen.hotswap.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from server.grpc_api.guard import (
    StateGetter,
    UndecodableRequest,
    metadata_value,
    required_role,
)
from server.grpc_api.inference import InferenceServicer
from server.grpc_api.status import status_of
from server.settings import Settings

logger = logging.getLogger(__name__)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    adapters_pb2.DESCRIPTOR.services_by_name["Adapters"].full_name,
)
HEALTH_POLL_S = 0.5
# Reflection shows the API's schema: like the HTTP API's docs, behind a key unless public_docs.
REFLECTION_METHODS = (
    f"/{reflection.SERVICE_NAME}/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)

_watchers: set[asyncio.Task[None]] = set()


async def start_grpc_server(
    settings: Settings, keys: KeyRing, state: StateGetter
) -> grpc.aio.Server:
    """Serve on `settings.host:settings.grpc_port`; `state()` is the running server's state
    (None while the engine starts). Health reports NOT_SERVING until the engine is ready."""
    limit = settings.grpc_max_message_bytes  # a larger message: RESOURCE_EXHAUSTED, unread
    inference = InferenceServicer(keys, state)
    adapters = AdaptersServicer(keys, state, settings.max_upload_bytes)
    roles = {
        **method_roles(inference_pb2.DESCRIPTOR.services_by_name["Inference"], inference),
        **method_roles(adapters_pb2.DESCRIPTOR.services_by_name["Adapters"], adapters),
    }
    if not settings.public_docs:
        roles |= {method: Role.INFER for method in REFLECTION_METHODS}
    server = grpc.aio.server(
        interceptors=[KeyInterceptor(keys, roles)],
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
    adapters_pb2_grpc.add_AdaptersServicer_to_server(adapters, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await _set_health(health, serving=False)
    reflection.enable_server_reflection(
        (
            *SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    watcher = asyncio.create_task(_watch_readiness(server, health, state))
    _watchers.add(watcher)
    watcher.add_done_callback(_watchers.discard)
    logger.info("gRPC listening on %s:%d", host, port)
    return server


class KeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks a call's `authorization` metadata against its method's role (`roles`, by full
    method name; absent: public) before the request message is read: a refused call ends
    UNAUTHENTICATED or PERMISSION_DENIED without its message being parsed."""

    def __init__(self, keys: KeyRing, roles: Mapping[str, Role]) -> None:
        self._keys = keys
        self._roles = roles

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        role = self._roles.get(details.method)
        if role is not None:
            try:
                self._keys.check(metadata_value(details.invocation_metadata, "authorization"), role)
            except AuthError as exc:
                code, message = status_of(exc) or (grpc.StatusCode.UNAUTHENTICATED, exc.message)
                return _refusal(await continuation(details), code, message)
        return _decoding_safely(await continuation(details))


def _decoding_safely(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """`handler` with a request deserializer that hands an undecodable unary message to the
    method as `UndecodableRequest` (answered INVALID_ARGUMENT) instead of raising."""
    parse = handler.request_deserializer if handler is not None else None
    if handler is None or parse is None or handler.request_streaming:
        return handler

    def parse_or_mark(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    replaced: grpc.RpcMethodHandler = handler._replace(request_deserializer=parse_or_mark)
    return replaced


def method_roles(service: ServiceDescriptor, servicer: object) -> dict[str, Role]:
    """`/<service>/<Method>` -> the role its `guarded` implementation declares."""
    roles: dict[str, Role] = {}
    for method in service.methods:
        role = required_role(getattr(servicer, method.name))
        if role is not None:
            roles[f"/{service.full_name}/{method.name}"] = role
    return roles


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code` at once; its
    request is left as raw bytes (no deserializer) and a request stream is never read."""

    async def abort(_: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


async def stop_grpc_server(server: grpc.aio.Server, grace_s: float) -> None:
    """Refuse new calls; calls in flight get `grace_s` seconds, then are cancelled (which
    aborts their engine requests)."""
    await server.stop(grace_s)
    logger.info("gRPC stopped")


async def _watch_readiness(
    server: grpc.aio.Server, health: health_aio.HealthServicer, state: StateGetter
) -> None:
    """Keep the health status in step with the engine until the server stops."""
    serving = False
    while await server.wait_for_termination(timeout=HEALTH_POLL_S):  # True: still running
        current = state()
        ready = current is not None and current.engine.ready
        if ready != serving:
            serving = ready
            await _set_health(health, serving=serving)


async def _set_health(health: health_aio.HealthServicer, *, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", *SERVICES):
        await health.set(service, status)
