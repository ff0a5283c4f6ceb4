"""The same hostile requests over gRPC: the key checked before the message is read, the
message size capped, schemas and archives refused with the status matching HTTP's 4xx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.grpc_api.gen.hotswap.v1 import adapters_pb2 as apb
from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc, inference_pb2_grpc
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from tests.security.conftest import Witness, bearer
from tests.security.payloads import (
    ADMIN_KEY,
    INFER_KEY,
    MB,
    SCHEMAS,
    Target,
    nan_lora_alpha,
    pax_bomb,
    zip_with_lying_count,
)

pytestmark = pytest.mark.engine

Code = grpc.StatusCode
CHUNK = 1 * MB
REFUSED_WITHIN_S = 10.0
ANSWERED_WITHIN_S = 60.0  # a schema request generates (up to 3 attempts of 64 tokens)


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def adapters(channel: grpc.Channel) -> adapters_pb2_grpc.AdaptersStub:
    return adapters_pb2_grpc.AdaptersStub(channel)


def _generate(schema: dict[str, object]) -> pb.GenerateRequest:
    return pb.GenerateRequest(text="Answer in JSON.", max_tokens=64, schema_json=json.dumps(schema))


def _upload(data: bytes, name: str) -> Iterator[apb.UploadAdapterRequest]:
    yield apb.UploadAdapterRequest(header=apb.UploadHeader(filename="a", size=len(data), name=name))
    for start in range(0, len(data), CHUNK):
        yield apb.UploadAdapterRequest(chunk=data[start : start + CHUNK])


# (schema, status, words of the refusal). OK: the answer validates (RE2 decides the pattern at
# once; every double is a multiple of 5e-324, which is 2**-1074).
SCHEMA_CASES = [
    ("enum-forced-backtracking-pattern", Code.INVALID_ARGUMENT, "no enum/const value fits"),
    ("backtracking-pattern-properties", Code.OK, ""),
    ("backreference-pattern", Code.INVALID_ARGUMENT, "pattern"),
    ("ref-fanout-under-not", Code.INVALID_ARGUMENT, "$ref"),
    ("http-ref", Code.INVALID_ARGUMENT, "$ref"),
    ("file-ref", Code.INVALID_ARGUMENT, "$ref"),
    ("multipleOf-5e-324", Code.OK, ""),
]


@pytest.mark.parametrize(("schema_id", "code", "needle"), SCHEMA_CASES)
def test_hostile_schema(
    inference: inference_pb2_grpc.InferenceStub,
    witness: Witness,
    target: Target,
    schema_id: str,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    started = time.monotonic()
    got, reply = witness.grpc(inference.Generate, _generate(SCHEMAS[schema_id](target)), INFER_KEY)
    assert got == code, reply
    if code == Code.OK:
        assert reply.HasField("valid") and reply.valid, reply
    else:
        assert needle.lower() in reply.lower()
    assert time.monotonic() - started < ANSWERED_WITHIN_S


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        pytest.param(
            pb.GenerateRequest(adapter="alpha@" + "9" * 20, text="x"),
            Code.NOT_FOUND,
            "alpha",
            id="adapter-at-20-digits",
        ),
        pytest.param(
            pb.GenerateRequest(text="x", temperature=float("nan")),
            Code.INVALID_ARGUMENT,
            "temperature",
            id="NaN-temperature",
        ),
        pytest.param(
            pb.GenerateRequest(text="a" * (3 * MB)),
            Code.INVALID_ARGUMENT,
            "characters",
            id="3MB-text",
        ),
        pytest.param(
            pb.GenerateRequest(text="a" * (5 * MB)),
            Code.RESOURCE_EXHAUSTED,
            "",
            id="5MB-message",
        ),
    ],
)
def test_hostile_fields_are_refused(
    inference: inference_pb2_grpc.InferenceStub,
    witness: Witness,
    request_: pb.GenerateRequest,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    started = time.monotonic()
    got, details = witness.grpc(inference.Generate, request_, INFER_KEY)
    assert got == code, details
    assert needle.lower() in str(details).lower()
    assert time.monotonic() - started < REFUSED_WITHIN_S


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, Code.UNAUTHENTICATED), ("wrong", Code.UNAUTHENTICATED)],
)
def test_inference_needs_a_key(
    inference: inference_pb2_grpc.InferenceStub,
    witness: Witness,
    key: str | None,
    code: grpc.StatusCode,
) -> None:
    got, details = witness.grpc(inference.Generate, pb.GenerateRequest(text="x"), key)
    assert got == code and "key" in details.lower()


def test_admin_calls_need_the_admin_role(
    adapters: adapters_pb2_grpc.AdaptersStub, witness: Witness
) -> None:
    code, details = witness.grpc(adapters.ListAdapters, apb.ListAdaptersRequest(), INFER_KEY)
    assert code == Code.PERMISSION_DENIED and "admin" in details


def test_oversized_message_without_a_key_is_refused(
    inference: inference_pb2_grpc.InferenceStub, witness: Witness
) -> None:
    code, _ = witness.grpc(inference.Generate, pb.GenerateRequest(text="a" * (5 * MB)), None)
    assert code in {Code.UNAUTHENTICATED, Code.RESOURCE_EXHAUSTED}


def test_keyless_upload_stream_is_refused_before_it_is_read(
    adapters: adapters_pb2_grpc.AdaptersStub, witness: Witness
) -> None:
    """32 MB offered in 1 MB chunks without a key: refused before the client sent them all."""
    pulled = 0
    lock = threading.Lock()

    def stream() -> Iterator[apb.UploadAdapterRequest]:
        nonlocal pulled
        yield apb.UploadAdapterRequest(header=apb.UploadHeader(filename="a", size=32 * MB))
        for _ in range(32):
            with lock:
                pulled += 1
            time.sleep(0.05)
            yield apb.UploadAdapterRequest(chunk=b"x" * CHUNK)

    code, details = witness.grpc(adapters.UploadAdapter, stream(), None)
    assert code == Code.UNAUTHENTICATED, details
    assert pulled < 32, "the whole upload was sent before the refusal"


@pytest.mark.parametrize(
    ("case_id", "needle"),
    [
        ("tar-pax-header-CVE-2024-6232", "header"),
        ("zip-lying-member-count", "members"),
        ("NaN-lora_alpha", "lora_alpha"),
    ],
)
def test_hostile_archive_is_invalid_argument(
    adapters: adapters_pb2_grpc.AdaptersStub,
    witness: Witness,
    target: Target,
    case_id: str,
    needle: str,
) -> None:
    build = {
        "tar-pax-header-CVE-2024-6232": lambda: pax_bomb(),
        "zip-lying-member-count": lambda: zip_with_lying_count(target),
        "NaN-lora_alpha": lambda: nan_lora_alpha(target),
    }[case_id]
    started = time.monotonic()
    code, details = witness.grpc(
        adapters.UploadAdapter, _upload(build(), f"hostile-{case_id}"), ADMIN_KEY
    )
    assert code == Code.INVALID_ARGUMENT, details
    assert needle.lower() in details.lower()
    assert time.monotonic() - started < REFUSED_WITHIN_S


def test_version_overflow_is_refused(
    adapters: adapters_pb2_grpc.AdaptersStub, witness: Witness
) -> None:
    request = apb.GetAdapterVersionRequest(name="alpha", version=2**31 - 1)
    code, details = witness.grpc(adapters.GetAdapterVersion, request, ADMIN_KEY)
    assert code == Code.NOT_FOUND, details


@pytest.mark.parametrize(("key", "code"), [(None, Code.UNAUTHENTICATED), (INFER_KEY, Code.OK)])
def test_reflection_needs_a_key(
    channel: grpc.Channel, witness: Witness, key: str | None, code: grpc.StatusCode
) -> None:
    """Reflection shows the API's schema: like `/openapi.json`, behind a key."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        replies = list(stub.ServerReflectionInfo(iter([ask]), metadata=bearer(key), timeout=30))
        got = Code.OK
    except grpc.RpcError as exc:
        got, replies = exc.code(), []
    assert got == code
    if code == Code.OK:
        names = {s.name for s in replies[0].list_services_response.service}
        assert "hotswap.v1.Inference" in names
