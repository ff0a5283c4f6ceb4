"""gRPC's edge (no engine): the key is checked from the metadata before the request message
is parsed, reflection follows `public_docs`, an unexpected error is INTERNAL with no internal
text, and messages over `grpc_max_message_bytes` are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.auth import KeyRing, Role
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.server import start_grpc_server, stop_grpc_server
from server.settings import Settings
from tests.support.grpc_calls import call_status
from tests.support.server import free_port

KEYS = KeyRing({"a-secret": Role.ADMIN, "i-secret": Role.INFER})
Code = grpc.StatusCode


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


class _Broken:
    """A server state whose engine fails in an unexpected way."""

    @property
    def engine(self) -> Any:
        raise RuntimeError("secret internal detail")


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(home=tmp_path, grpc_port=free_port(), grpc_max_message_bytes=4096)
    server = await start_grpc_server(settings, KEYS, lambda: _Broken())  # type: ignore[arg-type,return-value]
    try:
        yield f"127.0.0.1:{settings.grpc_port}"
    finally:
        await stop_grpc_server(server, 0)


async def test_a_refused_call_is_never_parsed(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        raw = channel.unary_unary("/hotswap.v1.Inference/Generate")  # bytes in, bytes out
        garbage = b"\xff" * 100  # not a GenerateRequest
        assert (await call_status(raw(garbage)))[0] == Code.UNAUTHENTICATED
        assert (await call_status(raw(garbage, metadata=_auth("nope"))))[0] == Code.UNAUTHENTICATED
        admin = channel.unary_unary("/hotswap.v1.Adapters/ListAdapters")
        code, details = await call_status(admin(b"", metadata=_auth("i-secret")))
        assert code == Code.PERMISSION_DENIED and "'admin'" in details


async def test_an_unexpected_error_is_internal_with_the_request_id_only(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        generate = channel.unary_unary(
            "/hotswap.v1.Inference/Generate",
            request_serializer=pb.GenerateRequest.SerializeToString,
        )
        metadata = (*_auth("i-secret"), ("x-request-id", "req-9"))
        code, details = await call_status(
            generate(pb.GenerateRequest(text="hi"), metadata=metadata)
        )
    assert code == Code.INTERNAL and "req-9" in details and "secret" not in details


async def test_a_message_over_the_limit_is_refused(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        raw = channel.unary_unary("/hotswap.v1.Inference/Generate")
        code, _ = await call_status(raw(b"\0" * 8192, metadata=_auth("i-secret")))
    assert code == Code.RESOURCE_EXHAUSTED


async def test_reflection_needs_a_key_and_health_does_not(target: str) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask(metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            try:
                async for _ in stub.ServerReflectionInfo(iter([request]), metadata=metadata):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return Code.OK

        assert await ask(()) == Code.UNAUTHENTICATED
        assert await ask(_auth("i-secret")) == Code.OK
