"""The gRPC server beside the HTTP one, in the same process and on the same engine:
`hotswap.v1.Inference`, `hotswap.v1.Adapters`, the standard health service and reflection."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.auth import KeyRing
from server.grpc_api.adapters import AdaptersServicer
from server.grpc_api.gen.hotswap.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from server.grpc_api.guard import StateGetter
from server.grpc_api.inference import InferenceServicer
from server.settings import Settings

logger = logging.getLogger(__name__)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    adapters_pb2.DESCRIPTOR.services_by_name["Adapters"].full_name,
)
HEALTH_POLL_S = 0.5

_watchers: set[asyncio.Task[None]] = set()


async def start_grpc_server(
    settings: Settings, keys: KeyRing, state: StateGetter
) -> grpc.aio.Server:
    """Serve on `settings.host:settings.grpc_port`; `state()` is the running server's state
    (None while the engine starts). Health reports NOT_SERVING until the engine is ready."""
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ]
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(keys, state), server)
    adapters_pb2_grpc.add_AdaptersServicer_to_server(
        AdaptersServicer(keys, state, settings.max_upload_bytes), server
    )
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
