"""The HTTP edge with keys on: the key is checked from the headers before any body byte is
read, bodies are capped while they stream, and every route but the probes needs a key."""

from __future__ import annotations

import json

import pytest

from tests.security.conftest import UPLOAD_CAP, Witness
from tests.security.expect import assert_envelope
from tests.security.payloads import ADMIN_KEY, INFER_KEY, MB
from tests.security.wire import send_streaming_body

pytestmark = pytest.mark.engine

BIG = 32 * MB
ANSWERED_BEFORE_S = 5.0
JSON = {"content-type": "application/json"}
MULTIPART = {"content-type": "multipart/form-data; boundary=hostile"}


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("path", "head", "status", "needle"),
    [
        pytest.param("/v1/chat/completions", JSON, 401, "API key", id="keyless-32MB-json"),
        pytest.param("/v1/generate", JSON, 401, "API key", id="keyless-32MB-generate"),
        pytest.param("/v1/adapters", MULTIPART, 401, "API key", id="keyless-32MB-upload"),
        pytest.param(
            "/v1/adapters",
            {**MULTIPART, **_bearer(INFER_KEY)},
            403,
            "admin",
            id="infer-key-32MB-upload",
        ),
        pytest.param(
            "/v1/chat/completions", {**JSON, **_bearer(INFER_KEY)}, 413, "bytes", id="32MB-json"
        ),
        pytest.param(
            "/v1/adapters", {**MULTIPART, **_bearer(ADMIN_KEY)}, 413, "bytes", id="32MB-upload"
        ),
    ],
)
def test_large_body_is_answered_before_it_is_read(
    witness: Witness, path: str, head: dict[str, str], status: int, needle: str
) -> None:
    answer = send_streaming_body(witness.server.url, head, BIG, path)
    witness.answers.append(answer.text)
    assert answer.status == status, answer.text[:500]
    assert answer.body_bytes_sent < BIG, "the whole body was sent before the answer"
    assert answer.seconds < ANSWERED_BEFORE_S, f"answered after {answer.seconds:.1f} s"
    _, _, body = answer.text.partition("\r\n\r\n")
    assert_envelope(status, json.loads(body), (needle,))


def test_upload_one_byte_over_the_cap_is_413(witness: Witness) -> None:
    files = {"file": ("a.tar.gz", b"\x1f\x8b" + b"\0" * (UPLOAD_CAP - 1), "application/gzip")}
    response = witness.http.post("/v1/adapters", files=files, headers=_bearer(ADMIN_KEY))
    assert response.status_code == 413, response.text
    assert_envelope(413, response.json(), (str(UPLOAD_CAP),))


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/docs", "/redoc"])
def test_metrics_and_api_docs_need_a_key(witness: Witness, path: str) -> None:
    refused = witness.http.get(path)
    assert refused.status_code == 401, refused.text
    assert_envelope(401, refused.json(), ("API key",))
    for key in (INFER_KEY, ADMIN_KEY):
        assert witness.http.get(path, headers=_bearer(key)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "needle"),
    [
        pytest.param("GET", "/v1/models", {}, 401, "API key", id="no-key"),
        pytest.param("GET", "/v1/models", _bearer("wrong"), 401, "API key", id="unknown-key"),
        pytest.param(
            "GET", "/v1/models", {"authorization": "Basic eA=="}, 401, "Bearer", id="basic"
        ),
        pytest.param("GET", "/v1/adapters", _bearer(INFER_KEY), 403, "admin", id="infer-on-admin"),
        pytest.param("GET", "/v1/nowhere", _bearer(INFER_KEY), 404, "not found", id="no-route"),
        pytest.param(
            "PUT", "/v1/models", _bearer(INFER_KEY), 405, "not allowed", id="wrong-method"
        ),
    ],
)
def test_edge_refusals_use_the_envelope(
    witness: Witness, method: str, path: str, headers: dict[str, str], status: int, needle: str
) -> None:
    response = witness.http.request(method, path, headers=headers)
    witness.answers.append(response.text)
    assert response.status_code == status, response.text
    assert_envelope(status, response.json(), (needle,))


def test_probes_need_no_key(witness: Witness) -> None:
    assert witness.http.get("/healthz").json() == {"status": "ok"}
    assert witness.http.get("/readyz").status_code == 200
