"""The same scenarios over HTTP and gRPC on the one real server (float32, greedy) give the
same results: generation, streaming, the adapter lifecycle, every error; plus cancellation,
deadlines, health and reflection."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.grpc_api.gen.hotswap.v1 import adapters_pb2 as apb
from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc, inference_pb2_grpc
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.structs import from_struct, to_struct
from tests.support.adapters import make_random_lora, pack_adapter
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

Code = grpc.StatusCode
AS_GRPC = {
    200: Code.OK,
    201: Code.OK,
    204: Code.OK,
    400: Code.INVALID_ARGUMENT,
    404: Code.NOT_FOUND,
    409: Code.FAILED_PRECONDITION,
    413: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}},
    "required": ["city"],
}
CHUNK = 64 << 10


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def admin(channel: grpc.Channel) -> adapters_pb2_grpc.AdaptersStub:
    return adapters_pb2_grpc.AdaptersStub(channel)


def _grpc(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, Any]:
    """(status code, reply or error details) of a call."""
    try:
        return Code.OK, call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def _http_generate(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/generate", json=body, timeout=300)


def _output(message: pb.GenerateResponse | pb.Choice) -> Any:
    if message.HasField("output_struct"):
        return from_struct(message.output_struct)
    if message.HasField("output_json"):
        return json.loads(message.output_json)
    return None


def _choice_dict(message: pb.GenerateResponse | pb.Choice, index: int) -> dict[str, Any]:
    """One choice's fields in the HTTP API's shape (logprobs were not asked for)."""
    assert not message.logprobs
    return {
        "index": index,
        "text": message.text,
        "output": _output(message),
        "valid": message.valid if message.HasField("valid") else None,
        "finish_reason": message.finish_reason if message.HasField("finish_reason") else None,
        "logprobs": None,
        "confidence": message.confidence if message.HasField("confidence") else None,
        "top_labels": [
            {"label": entry.label, "probability": entry.probability} for entry in message.top_labels
        ]
        if message.HasField("abstained")
        else None,
        "abstained": message.abstained if message.HasField("abstained") else None,
        "label_probabilities": [
            {"label": entry.label, "probability": entry.probability}
            for entry in message.label_probabilities
        ]
        or None,
        "empty_set_probability": message.empty_set_probability
        if message.HasField("empty_set_probability")
        else None,
    }


def _as_dict(reply: pb.GenerateResponse) -> dict[str, Any]:
    """A gRPC reply in the HTTP API's shape."""
    return {
        **_choice_dict(reply, 0),
        "choices": [_choice_dict(choice, choice.index) for choice in reply.choices],
        "usage": {
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "total_tokens": reply.usage.total_tokens,
        },
        "adapter": {
            "name": reply.adapter.name,
            "version": reply.adapter.version if reply.adapter.HasField("version") else None,
        },
        "grammar_engine": reply.grammar_engine if reply.HasField("grammar_engine") else None,
    }


GENERATE_CASES = [
    pytest.param(
        {"input": "What is the capital of France?", "max_tokens": 16},
        pb.GenerateRequest(text="What is the capital of France?", max_tokens=16),
        id="base-text",
    ),
    pytest.param(
        {"adapter": "alpha", "input": "Name a colour.", "max_tokens": 16},
        pb.GenerateRequest(adapter="alpha", text="Name a colour.", max_tokens=16),
        id="adapter-text",
    ),
    pytest.param(
        {
            "adapter": "beta",
            "input": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Say hi."},
            ],
            "max_tokens": 12,
            "temperature": 0.0,
        },
        pb.GenerateRequest(
            adapter="beta",
            messages=pb.ChatMessages(
                messages=[
                    pb.ChatMessage(role="system", content="Answer briefly."),
                    pb.ChatMessage(role="user", content="Say hi."),
                ]
            ),
            max_tokens=12,
            temperature=0.0,
        ),
        id="adapter-messages",
    ),
    pytest.param(
        {"input": "Which city is the capital of Italy?", "schema": SCHEMA, "max_tokens": 40},
        pb.GenerateRequest(
            text="Which city is the capital of Italy?",
            schema_json=json.dumps(SCHEMA),
            max_tokens=40,
        ),
        id="schema-json",
    ),
    pytest.param(
        {"input": "Which city is the capital of Spain?", "schema": SCHEMA, "max_tokens": 40},
        pb.GenerateRequest(
            text="Which city is the capital of Spain?",
            schema_struct=to_struct(SCHEMA),
            max_tokens=40,
        ),
        id="schema-struct",
    ),
]


@pytest.mark.parametrize(("body", "request_"), GENERATE_CASES)
def test_generate_matches_http(
    server: RunningServer,
    inference: inference_pb2_grpc.InferenceStub,
    body: dict[str, Any],
    request_: pb.GenerateRequest,
) -> None:
    over_http = _http_generate(server, body)
    assert over_http.status_code == 200, over_http.text
    reply = inference.Generate(request_, timeout=300)
    assert _as_dict(reply) == over_http.json()
    assert reply.text
    if "schema" in body:
        assert reply.valid and isinstance(from_struct(reply.output_struct)["city"], str)


@pytest.mark.parametrize("index", [0, 1, 3])
def test_stream_deltas_add_up_to_the_unary_reply(
    inference: inference_pb2_grpc.InferenceStub, index: int
) -> None:
    request_ = GENERATE_CASES[index].values[1]
    unary = inference.Generate(request_, timeout=300)
    events = list(inference.GenerateStream(request_, timeout=300))
    deltas = [e.delta for e in events[:-1]]
    assert all(e.WhichOneof("event") == "delta" for e in events[:-1]) and len(deltas) > 1
    assert events[-1].WhichOneof("event") == "summary"
    assert "".join(deltas) == unary.text
    assert events[-1].summary == unary


ERROR_CASES = [
    pytest.param(
        {"adapter": "nope", "input": "hi"},
        pb.GenerateRequest(adapter="nope", text="hi"),
        Code.NOT_FOUND,
        id="unknown-adapter",
    ),
    pytest.param(
        {"input": "hi", "schema": {"type": 12}},
        pb.GenerateRequest(text="hi", schema_struct=to_struct({"type": 12})),
        Code.INVALID_ARGUMENT,
        id="bad-schema",
    ),
    pytest.param(
        {"input": "word " * 3000},
        pb.GenerateRequest(text="word " * 3000),
        Code.INVALID_ARGUMENT,
        id="prompt-too-long",
    ),
    pytest.param(
        {"input": "hi", "max_tokens": 5000},
        pb.GenerateRequest(text="hi", max_tokens=5000),
        Code.INVALID_ARGUMENT,
        id="max-tokens-over-context",
    ),
    pytest.param(
        {"input": "hi", "max_tokens": 0},
        pb.GenerateRequest(text="hi", max_tokens=0),
        Code.INVALID_ARGUMENT,
        id="max-tokens-zero",
    ),
    pytest.param(
        {"input": "hi", "temperature": 3},
        pb.GenerateRequest(text="hi", temperature=3),
        Code.INVALID_ARGUMENT,
        id="temperature-out-of-range",
    ),
    pytest.param(
        {"input": [{"role": "robot", "content": "hi"}]},
        pb.GenerateRequest(messages=pb.ChatMessages(messages=[pb.ChatMessage(role="robot")])),
        Code.INVALID_ARGUMENT,
        id="bad-role",
    ),
]


@pytest.mark.parametrize(("body", "request_", "code"), ERROR_CASES)
def test_errors_match_http(
    server: RunningServer,
    inference: inference_pb2_grpc.InferenceStub,
    body: dict[str, Any],
    request_: pb.GenerateRequest,
    code: grpc.StatusCode,
) -> None:
    over_http = _http_generate(server, body)
    got, details = _grpc(inference.Generate, request_, timeout=60)
    assert AS_GRPC[over_http.status_code] == got == code, (over_http.text, details)
    error = over_http.json()["error"]
    assert details == error["message"]
    streamed, _ = _grpc(lambda: list(inference.GenerateStream(request_, timeout=60)))
    assert streamed == code


def test_grpc_only_input_errors(inference: inference_pb2_grpc.InferenceStub) -> None:
    code, details = _grpc(inference.Generate, pb.GenerateRequest(text="hi", schema_json="{"))
    assert code == Code.INVALID_ARGUMENT and "schema_json" in details
    code, details = _grpc(inference.Generate, pb.GenerateRequest(text="x" * (5 << 20)))
    assert code == Code.RESOURCE_EXHAUSTED  # over grpc_max_message_bytes (4 MiB)


class HttpAdmin:
    def __init__(self, server: RunningServer) -> None:
        self.url = f"{server.url}/v1"

    def _answer(self, response: httpx.Response) -> tuple[grpc.StatusCode, Any]:
        code = AS_GRPC[response.status_code]
        if code != Code.OK:
            return code, response.json()["error"]["message"]
        return code, response.json() if response.content else None

    def upload(self, data: bytes, name: str) -> tuple[grpc.StatusCode, Any]:
        files = {"file": ("a.tar.gz", data, "application/gzip")}
        return self._answer(
            httpx.post(f"{self.url}/adapters", files=files, data={"name": name}, timeout=300)
        )

    def get(self, name: str) -> tuple[grpc.StatusCode, Any]:
        return self._answer(httpx.get(f"{self.url}/adapters/{name}"))

    def get_version(self, name: str, version: int) -> tuple[grpc.StatusCode, Any]:
        return self._answer(httpx.get(f"{self.url}/adapters/{name}/versions/{version}"))

    def promote(self, name: str, version: int) -> tuple[grpc.StatusCode, Any]:
        body = {"version": version}
        return self._answer(
            httpx.post(f"{self.url}/adapters/{name}/promote", json=body, timeout=300)
        )

    def rollback(self, name: str) -> tuple[grpc.StatusCode, Any]:
        return self._answer(httpx.post(f"{self.url}/adapters/{name}/rollback", timeout=300))

    def delete(self, name: str, version: int) -> tuple[grpc.StatusCode, Any]:
        return self._answer(httpx.delete(f"{self.url}/adapters/{name}/versions/{version}"))

    def generate(self, name: str) -> tuple[grpc.StatusCode, Any]:
        body = {"adapter": name, "input": "Tell me a fact.", "max_tokens": 12}
        return self._answer(httpx.post(f"{self.url}/generate", json=body, timeout=300))


class GrpcAdmin:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = adapters_pb2_grpc.AdaptersStub(channel)
        self.inference = inference_pb2_grpc.InferenceStub(channel)

    def _answer(self, call: Any, *args: Any) -> tuple[grpc.StatusCode, Any]:
        code, reply = _grpc(call, *args, timeout=300)
        if code != Code.OK:
            return code, reply
        if isinstance(reply, apb.AdapterVersion):
            return code, _version(reply)
        if isinstance(reply, apb.UploadAdapterResponse):
            return code, {**_version(reply.adapter), "created": reply.created}
        if isinstance(reply, apb.Adapter):
            return code, {
                "name": reply.name,
                "promoted_version": reply.promoted_version
                if reply.HasField("promoted_version")
                else None,
                "versions": [_version(v) for v in reply.versions],
            }
        if isinstance(reply, pb.GenerateResponse):
            return code, _as_dict(reply)
        return code, None

    def upload(self, data: bytes, name: str) -> tuple[grpc.StatusCode, Any]:
        return self._answer(self.stub.UploadAdapter, upload_messages(data, name))

    def get(self, name: str) -> tuple[grpc.StatusCode, Any]:
        return self._answer(self.stub.GetAdapter, apb.GetAdapterRequest(name=name))

    def get_version(self, name: str, version: int) -> tuple[grpc.StatusCode, Any]:
        request_ = apb.GetAdapterVersionRequest(name=name, version=version)
        return self._answer(self.stub.GetAdapterVersion, request_)

    def promote(self, name: str, version: int) -> tuple[grpc.StatusCode, Any]:
        request_ = apb.PromoteAdapterRequest(name=name, version=version)
        return self._answer(self.stub.PromoteAdapter, request_)

    def rollback(self, name: str) -> tuple[grpc.StatusCode, Any]:
        return self._answer(self.stub.RollbackAdapter, apb.RollbackAdapterRequest(name=name))

    def delete(self, name: str, version: int) -> tuple[grpc.StatusCode, Any]:
        request_ = apb.DeleteAdapterRequest(name=name, version=version)
        return self._answer(self.stub.DeleteAdapter, request_)

    def generate(self, name: str) -> tuple[grpc.StatusCode, Any]:
        request_ = pb.GenerateRequest(adapter=name, text="Tell me a fact.", max_tokens=12)
        return self._answer(self.inference.Generate, request_)


def _version(message: apb.AdapterVersion) -> dict[str, Any]:
    return {
        "name": message.name,
        "version": message.version,
        "digest": message.digest,
        "created_at": message.created_at.ToDatetime().isoformat(),
        "manifest": from_struct(message.manifest),
    }


def upload_messages(
    data: bytes, name: str | None, size: int | None = None
) -> Iterator[apb.UploadAdapterRequest]:
    header = apb.UploadHeader(filename="a.tar.gz", size=len(data) if size is None else size)
    if name is not None:
        header.name = name
    yield apb.UploadAdapterRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield apb.UploadAdapterRequest(chunk=data[start : start + CHUNK])


def _comparable(outcome: tuple[grpc.StatusCode, Any], name: str) -> Any:
    """An outcome with what legitimately differs between the two runs taken out: the
    adapter's name, the times of creation, and 8.0 against 8 (Struct numbers are doubles)."""
    text = json.dumps(outcome[1], sort_keys=True, default=str).replace(name, "NAME")
    text = json.dumps(json.loads(text, parse_float=_number), sort_keys=True)
    return outcome[0], re.sub(r'"created_at": "[^"]*"', '"created_at": "T"', text)


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


@pytest.fixture(scope="module")
def archives(base_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    root = tmp_path_factory.mktemp("grpc-archives")
    return [
        pack_adapter(
            make_random_lora(
                base_model_path, root / f"v{i}", seed=40 + i, rank=4, target_modules=["q_proj"]
            ),
            root / f"v{i}.tar.gz",
        ).read_bytes()
        for i in (1, 2)
    ]


def test_adapter_lifecycle_matches_http(
    server: RunningServer, channel: grpc.Channel, archives: list[bytes]
) -> None:
    runs: dict[str, list[Any]] = {}
    for client, name in ((HttpAdmin(server), "life-http"), (GrpcAdmin(channel), "life-grpc")):
        steps = [
            client.upload(archives[0], name),
            client.upload(archives[0], name),
            client.upload(archives[1], name),
            client.get(name),
            client.promote(name, 2),
            client.generate(name),
            client.get_version(name, 2),
            client.rollback(name),
            client.delete(name, 1),
            client.delete(name, 2),
            client.get_version(name, 2),
            client.promote(name, 7),
            client.upload(b"not an archive", name),
        ]
        runs[name] = [_comparable(step, name) for step in steps]
    pairs = zip(runs["life-grpc"], runs["life-http"], strict=True)
    for step, (over_grpc, over_http) in enumerate(pairs):
        assert over_grpc == over_http, f"step {step}"
    codes = [code for code, _ in runs["life-grpc"]]
    assert codes[:8] == [Code.OK] * 8
    assert codes[8:] == [
        Code.FAILED_PRECONDITION,  # deleting the promoted version
        Code.OK,
        Code.NOT_FOUND,
        Code.NOT_FOUND,
        Code.INVALID_ARGUMENT,  # AdapterRejected
    ]
    created = [json.loads(detail)["created"] for _, detail in runs["life-grpc"][:3]]
    assert created == [True, False, True]


def test_bad_uploads_leave_nothing(
    admin: adapters_pb2_grpc.AdaptersStub, archives: list[bytes]
) -> None:
    before = admin.ListAdapters(apb.ListAdaptersRequest())
    data = archives[0]
    cases: dict[str, Iterator[apb.UploadAdapterRequest]] = {
        "truncated": upload_messages(data, "partial", size=len(data) + 10),
        "over-announced": upload_messages(data, "partial", size=len(data) - 10),
        "over-the-limit": upload_messages(data, "partial", size=1 << 40),
        "no-header": iter([apb.UploadAdapterRequest(chunk=data)]),
        "empty": iter([]),
    }
    for label, messages in cases.items():
        code, details = _grpc(admin.UploadAdapter, messages, timeout=60)
        assert code == Code.INVALID_ARGUMENT, (label, details)
    assert admin.ListAdapters(apb.ListAdaptersRequest()) == before
    code, _ = _grpc(admin.GetAdapter, apb.GetAdapterRequest(name="partial"))
    assert code == Code.NOT_FOUND


def _metric(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        sample = line.startswith(f"{name}{{") or line.startswith(f"{name} ")
        if sample and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _until(condition: Any, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


LONG = pb.GenerateRequest(
    adapter="beta", text="Count from one to one thousand in words.", max_tokens=1500
)


def test_cancel_and_deadline_abort_in_the_engine(
    server: RunningServer, inference: inference_pb2_grpc.InferenceStub
) -> None:
    aborted = _metric(server, "hotswap_requests_aborted_total", protocol="grpc")
    stream = inference.GenerateStream(LONG, timeout=300)
    for _ in range(3):
        assert next(stream).delta is not None
    stream.cancel()
    _until(
        lambda: _metric(server, "hotswap_requests_aborted_total", protocol="grpc") == aborted + 1
    )
    _until(lambda: _metric(server, "hotswap_requests_in_flight") == 0)
    # vLLM's own gauge (0 as well when absent): the request left the engine's scheduler.
    _until(lambda: _metric(server, "vllm:num_requests_running") == 0)

    started = time.monotonic()
    code, _ = _grpc(inference.Generate, LONG, timeout=1.0)
    assert code == Code.DEADLINE_EXCEEDED and time.monotonic() - started < 5
    _until(
        lambda: _metric(server, "hotswap_requests_aborted_total", protocol="grpc") == aborted + 2
    )
    _until(lambda: _metric(server, "hotswap_requests_in_flight") == 0)
    reply = inference.Generate(pb.GenerateRequest(text="Say hi.", max_tokens=4), timeout=60)
    assert reply.usage.completion_tokens > 0


def test_health_serving_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "hotswap.v1.Inference", "hotswap.v1.Adapters"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "hotswap.v1.Inference",
        "hotswap.v1.Adapters",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
