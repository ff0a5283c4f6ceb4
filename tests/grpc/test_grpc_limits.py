"""The task call's limits over gRPC, in-process with a fake engine: every hostile field
ends in INVALID_ARGUMENT naming it, never INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from server.auth import KeyRing
from server.generation import GenerationService
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import inference_pb2_grpc
from server.grpc_api.server import start_grpc_server, stop_grpc_server
from server.grpc_api.structs import to_struct
from server.metrics.labels import LabelTracker
from server.schema_policy import SchemaPolicy
from server.settings import Settings
from server.state import ServerState
from tests.support.fakes import FakeCatalog, FakeEngine, FakeGuard
from tests.support.server import free_port

Code = grpc.StatusCode


class ReadyEngine(FakeEngine):
    ready = True


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    engine = ReadyEngine("ok")
    catalog = FakeCatalog()
    generation = GenerationService(
        engine,  # type: ignore[arg-type]
        catalog,  # type: ignore[arg-type]
        max_model_len=100,
        default_max_tokens=16,
        max_in_flight=8,
        labels=LabelTracker(),
        schemas=SchemaPolicy(FakeGuard()),
        max_prompt_chars=1000,
    )
    state = ServerState(
        engine=engine,  # type: ignore[arg-type]
        catalog=catalog,  # type: ignore[arg-type]
        generation=generation,
        adapters=None,  # type: ignore[arg-type]
        labels=LabelTracker(),
    )
    settings = Settings(home=tmp_path, grpc_port=free_port())
    server = await start_grpc_server(settings, KeyRing({}), lambda: state)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as opened:
            yield opened
    finally:
        await stop_grpc_server(server, 0)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def _struct_with(number: float) -> Struct:
    struct = to_struct({"type": "number"})
    struct.fields["maximum"].number_value = number
    return struct


@pytest.mark.parametrize(
    ("request_", "details"),
    [
        (
            pb.GenerateRequest(text="hi", seed=-1),
            "seed: Input should be greater than or equal to 0",
        ),
        (pb.GenerateRequest(text="hi", max_tokens=-5), "max_tokens: Input should be greater"),
        (pb.GenerateRequest(text="hi", temperature=float("nan")), "temperature: Input should be"),
        (pb.GenerateRequest(text="hi", top_p=float("inf")), "top_p: Input should be a finite"),
        (pb.GenerateRequest(text="hi", adapter="a" * 201), "adapter: String should have at most"),
        (pb.GenerateRequest(text="x" * 1001), "`input` is 1001 characters long, over the limit"),
        (
            pb.GenerateRequest(
                messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")] * 257)
            ),
            "List should have at most 256 items",
        ),
        (pb.GenerateRequest(text="hi", schema_json="NaN"), "`schema_json` holds a number that"),
        (
            pb.GenerateRequest(text="hi", schema_json='{"maximum": -Infinity}'),
            "`schema_json` holds a number that is not finite",
        ),
        (pb.GenerateRequest(text="hi", schema_json=_nested(100_000)), "nests too deeply"),
        (
            pb.GenerateRequest(text="hi", schema_struct=_struct_with(float("inf"))),
            "`schema_struct` holds a number that is not finite",
        ),
        (
            pb.GenerateRequest(text="hi", schema_struct=_struct_with(float("nan"))),
            "`schema_struct` holds a number that is not finite",
        ),
    ],
)
async def test_hostile_fields_are_invalid_arguments(
    stub: inference_pb2_grpc.InferenceStub, request_: pb.GenerateRequest, details: str
) -> None:
    for call in (stub.Generate(request_), _drain(stub.GenerateStream(request_))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == Code.INVALID_ARGUMENT, caught.value.details()
        assert details in (caught.value.details() or "")


async def test_the_largest_int64_seed_is_served(stub: inference_pb2_grpc.InferenceStub) -> None:
    reply = await stub.Generate(pb.GenerateRequest(text="hi", seed=2**63 - 1))
    assert reply.text == "ok"


async def test_a_struct_nested_past_protobufs_depth_limit_is_an_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    """protobuf refuses to decode it (the client's protobuf refuses to build it: the bytes
    are written by hand)."""
    struct = b""
    for _ in range(60):  # Struct{fields: {"a": Value{struct_value: struct}}}
        struct = _field(1, _field(1, b"a") + _field(2, _field(5, struct)))
    message = _field(2, b"hi") + _field(5, struct)
    generate = channel.unary_unary("/hotswap.v1.Inference/Generate")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(message)
    assert caught.value.code() == Code.INVALID_ARGUMENT, caught.value.details()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def _drain(call: grpc.aio.UnaryStreamCall) -> None:
    async for _ in call:
        pass
