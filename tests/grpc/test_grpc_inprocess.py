"""The gRPC server in-process with a fake engine (fast): health, auth roles (compared with
HTTP), status codes, cancellation and deadlines freeing the engine, message size limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.errors import AdapterConflict, AdapterNotFound, AdapterRejected
from server.auth import AuthError, KeyRing, Role
from server.catalog import ServedModel
from server.engine import Chunk, LoraTarget, Sampling
from server.errors import (
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PromptTooLong,
    QueueFull,
)
from server.generation import GenerationService
from server.grpc_api.gen.hotswap.v1 import adapters_pb2, adapters_pb2_grpc, inference_pb2_grpc
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.server import start_grpc_server, stop_grpc_server
from server.grpc_api.status import status_of
from server.http.app import create_app
from server.metrics.labels import LabelTracker
from server.settings import Settings
from server.state import ServerState
from tests.support.grpc_calls import call_status
from tests.support.server import free_port

ADMIN, INFER = "admin-key-1", "infer-key-2"
Code = grpc.StatusCode


class SlowEngine:
    """One token per character; replies `words` words, `delay` seconds apart, and records
    whether each run was closed before its end."""

    def __init__(self, words: int = 3, delay: float = 0.0) -> None:
        self.words = words
        self.delay = delay
        self.ready = True
        self.finished: list[bool] = []
        self.fail: Exception | None = None

    def render_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return [ord(c) for m in messages for c in m["content"]]

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        done = False
        try:
            if self.fail is not None:
                raise self.fail
            for i in range(self.words):
                await asyncio.sleep(self.delay)
                last = i == self.words - 1
                yield Chunk(f"w{i} ", len(ids), i + 1, "length" if last else None)
            done = True
        finally:
            self.finished.append(done)


class FakeCatalog:
    base = ServedModel("base", None, None)

    def resolve(self, ref: str | None) -> ServedModel:
        if ref is None:
            return self.base
        raise ModelNotFound(f"Unknown model {ref!r}. Available: base.")


class FakeAdapters:
    def list_adapters(self) -> list[Any]:
        return []


@dataclass
class Rig:
    engine: SlowEngine
    generation: GenerationService
    target: str
    holder: dict[str, ServerState | None] = field(default_factory=dict)

    def go_ready(self) -> None:
        self.holder["state"] = ServerState(
            engine=self.engine,  # type: ignore[arg-type]
            catalog=FakeCatalog(),  # type: ignore[arg-type]
            generation=self.generation,
            adapters=FakeAdapters(),  # type: ignore[arg-type]
            labels=LabelTracker(),
        )


def _settings(tmp: Path) -> Settings:
    return Settings(home=tmp, grpc_port=free_port(), grpc_max_message_bytes=4096)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    engine = SlowEngine()
    generation = GenerationService(
        engine,  # type: ignore[arg-type]
        FakeCatalog(),  # type: ignore[arg-type]
        max_model_len=10_000,
        default_max_tokens=16,
        max_in_flight=1,
        labels=LabelTracker(),
    )
    settings = _settings(tmp_path)
    keys = KeyRing({ADMIN: Role.ADMIN, INFER: Role.INFER})
    rig = Rig(engine, generation, f"127.0.0.1:{settings.grpc_port}")
    rig.holder["state"] = None
    server = await start_grpc_server(settings, keys, lambda: rig.holder["state"])
    try:
        yield rig
    finally:
        await stop_grpc_server(server, 0)


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)


def test_every_error_class_has_its_status_code() -> None:
    expected = {
        ModelNotFound("m"): Code.NOT_FOUND,
        AdapterNotFound("m"): Code.NOT_FOUND,
        InvalidRequest("m"): Code.INVALID_ARGUMENT,
        PromptTooLong("m"): Code.INVALID_ARGUMENT,
        PayloadTooLarge("m"): Code.INVALID_ARGUMENT,
        AdapterRejected("m"): Code.INVALID_ARGUMENT,
        AdapterConflict("m"): Code.FAILED_PRECONDITION,
        QueueFull("m"): Code.RESOURCE_EXHAUSTED,
        EngineUnavailable("m"): Code.UNAVAILABLE,
        AuthError(401, "m"): Code.UNAUTHENTICATED,
        AuthError(403, "m"): Code.PERMISSION_DENIED,
    }
    for exc, code in expected.items():
        assert status_of(exc) == (code, "m"), type(exc)
    assert status_of(RuntimeError("boom")) is None


async def test_health_follows_the_engine_and_calls_wait_for_it(rig: Rig) -> None:
    async with grpc.aio.insecure_channel(rig.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        code, details = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi"), metadata=_auth(INFER))
        )
        assert code == Code.UNAVAILABLE and "health" in details
        rig.go_ready()
        for _ in range(50):
            if (
                await _health(channel, "hotswap.v1.Inference")
                == health_pb2.HealthCheckResponse.SERVING
            ):
                break
            await asyncio.sleep(0.1)
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        reply = await stub.Generate(pb.GenerateRequest(text="hi"), metadata=_auth(INFER))
        assert reply.text == "w0 w1 w2 " and reply.finish_reason == "length"
        rig.engine.ready = False
        code, _ = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi"), metadata=_auth(INFER))
        )
        assert code == Code.UNAVAILABLE


async def test_roles_match_the_http_api(rig: Rig, tmp_path: Path) -> None:
    """Same keys, same calls: HTTP's 401/403/503 are gRPC's UNAUTHENTICATED/PERMISSION_DENIED/
    UNAVAILABLE (no engine: a call that passes the key check meets the starting engine)."""
    keys = KeyRing({ADMIN: Role.ADMIN, INFER: Role.INFER})
    app = create_app(_settings(tmp_path), keys)
    as_grpc = {401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED, 503: Code.UNAVAILABLE}
    cases = [
        (None, "infer"),
        ("nope", "infer"),
        (INFER, "infer"),
        (INFER, "admin"),
        (ADMIN, "admin"),
        (ADMIN, "infer"),
    ]
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
        grpc.aio.insecure_channel(rig.target) as channel,
    ):
        inference = inference_pb2_grpc.InferenceStub(channel)
        adapters = adapters_pb2_grpc.AdaptersStub(channel)
        for key, role in cases:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            metadata = _auth(key) if key else ()
            if role == "infer":
                answer = await http.post("/v1/generate", json={"input": "hi"}, headers=headers)
                call = inference.Generate(pb.GenerateRequest(text="hi"), metadata=metadata)
            else:
                answer = await http.get("/v1/adapters", headers=headers)
                call = adapters.ListAdapters(adapters_pb2.ListAdaptersRequest(), metadata=metadata)
            code, details = await call_status(call)
            assert code == as_grpc[answer.status_code], (key, role, answer.text)
            if answer.status_code != 503:  # each names its own readiness probe
                assert details == answer.json()["error"]["message"]
        # Health needs no key.
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_queue_full_cancel_and_deadline_free_the_engine(rig: Rig) -> None:
    rig.go_ready()
    rig.engine.words, rig.engine.delay = 200, 0.02
    async with grpc.aio.insecure_channel(rig.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        stream = stub.GenerateStream(pb.GenerateRequest(text="hi"), metadata=_auth(INFER))
        first = await stream.read()
        assert first.delta == "w0 "
        # max_in_flight is 1: a second request is refused while the stream runs.
        code, details = await call_status(
            stub.Generate(pb.GenerateRequest(text="x"), metadata=_auth(INFER))
        )
        assert code == Code.RESOURCE_EXHAUSTED and "retry later" in details
        stream.cancel()
        await _until(lambda: rig.engine.finished == [False])
        # A deadline ends the unary call and its engine run alike.
        code, _ = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi"), metadata=_auth(INFER), timeout=0.3)
        )
        assert code == Code.DEADLINE_EXCEEDED
        await _until(lambda: rig.engine.finished == [False, False])
        rig.engine.words, rig.engine.delay = 2, 0.0
        reply = await stub.Generate(pb.GenerateRequest(text="again"), metadata=_auth(INFER))
        assert reply.text == "w0 w1 " and rig.engine.finished[-1] is True


async def test_message_limits_and_unexpected_errors(rig: Rig) -> None:
    rig.go_ready()
    async with grpc.aio.insecure_channel(rig.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        big = pb.GenerateRequest(text="x" * 5000)
        code, _ = await call_status(stub.Generate(big, metadata=_auth(INFER)))
        assert code == Code.RESOURCE_EXHAUSTED
        rig.engine.words = 1000  # a reply over the 4 KiB send limit
        code, _ = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi"), metadata=_auth(INFER))
        )
        assert code == Code.RESOURCE_EXHAUSTED
        rig.engine.fail = RuntimeError("secret internals")
        code, details = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi"), metadata=_auth(INFER))
        )
        assert code == Code.INTERNAL and "secret" not in details
        code, details = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi", adapter="zeta"), metadata=_auth(INFER))
        )
        assert code == Code.NOT_FOUND and "zeta" in details
        code, details = await call_status(
            stub.Generate(pb.GenerateRequest(text="hi", temperature=5), metadata=_auth(INFER))
        )
        assert code == Code.INVALID_ARGUMENT and details.startswith("temperature:")
        code, details = await call_status(
            stub.Generate(pb.GenerateRequest(), metadata=_auth(INFER))
        )
        assert code == Code.INVALID_ARGUMENT and "no input" in details


async def _until(condition: Any, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
