"""The HTTP edge (no engine): keys, browser headers, media types and body caps are checked
before the app reads the body; every error is in the OpenAI envelope."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.types import Message

from server.auth import KeyRing, Role
from server.http.app import create_app
from server.http.schemas import Usage
from server.http.sse import event_stream
from server.request_log import JsonFormatter
from server.settings import Settings

KEYS = KeyRing({"a-secret": Role.ADMIN, "i-secret": Role.INFER})
ADMIN = {"Authorization": "Bearer a-secret"}
INFER = {"Authorization": "Bearer i-secret"}
LOCAL = "http://127.0.0.1:8000"
MB = 1 << 20


class _Lines(logging.Handler):
    """Log lines as the JSON formatter writes them while the request runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    handler = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _client(keys: KeyRing = KEYS, base_url: str = LOCAL, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(**settings), keys), base_url=base_url)


def _error(response: Any, status: int, *words: str) -> str:
    """Assert an error answer in the envelope; returns its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["type"], str)
    assert all(w in error["message"] for w in words), error["message"]
    return str(error["message"])


async def _call(
    app: FastAPI, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Send a POST through raw ASGI, the body in `chunks`; returns the status, the JSON
    answer and how many times the app called `receive`."""
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        if calls <= len(chunks):
            return {"type": "http.request", "body": chunks[calls - 1], "more_body": True}
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), calls


async def test_no_key_is_refused_before_a_body_byte_is_read() -> None:
    app = create_app(Settings(), KEYS)
    for path, content_type in (
        ("/v1/chat/completions", "application/json"),
        ("/v1/adapters", "multipart/form-data; boundary=x"),
    ):
        headers = {"host": "h", "content-type": content_type, "content-length": str(32 * MB)}
        status, body, calls = await _call(app, path, headers, [b"x" * MB] * 32)
        assert (status, body["error"]["type"], calls) == (401, "authentication", 0)


async def test_an_undeclared_body_is_stopped_at_the_cap_on_the_stream() -> None:
    app = create_app(Settings(max_request_bytes=4 * MB), KEYS)
    headers = {"host": "h", "content-type": "application/json", "transfer-encoding": "chunked"}
    headers |= INFER
    status, body, calls = await _call(app, "/v1/chat/completions", headers, [b" " * MB] * 32)
    assert status == 413 and "4194304 bytes" in body["error"]["message"]
    assert calls == 5  # the fifth megabyte crossed the cap: nothing more was read


async def test_an_upload_is_stopped_at_its_cap_before_it_is_spooled() -> None:
    app = create_app(Settings(max_upload_bytes=MB), KEYS)
    headers = {"host": "h", "content-type": "multipart/form-data; boundary=b"} | ADMIN
    preamble = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.tar.gz"\r\n\r\n'
    chunks = [preamble] + [b"\0" * (256 << 10)] * 128  # 32 MB
    status, body, calls = await _call(app, "/v1/adapters", headers, chunks)
    assert status == 413 and body["error"]["type"] == "payload_too_large"
    assert calls <= 6  # 1 MB archive + 64 KiB of multipart overhead


def test_a_declared_length_over_the_cap_is_refused_up_front() -> None:
    response = _client(max_request_bytes=2048).post(
        "/v1/generate",
        content=b"{}" + b" " * 4096,
        headers=INFER | {"content-type": "application/json"},
    )
    _error(response, 413, "2048 bytes")


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/v1/generate", "text/plain", 415),
        ("/v1/generate", "application/x-www-form-urlencoded", 415),
        ("/v1/chat/completions", "multipart/form-data; boundary=x", 415),
        ("/v1/adapters", "application/json", 415),
        ("/v1/generate", "application/json; charset=utf-8", 503),  # admitted: engine starting
    ],
)
def test_bodies_need_their_routes_media_type(path: str, content_type: str, status: int) -> None:
    response = _client().post(path, content=b"{}", headers=ADMIN | {"content-type": content_type})
    assert response.status_code == status, response.text
    if status == 415:
        _error(response, 415, "Content-Type")


def test_a_bodyless_post_needs_no_content_type() -> None:
    assert _client().post("/v1/adapters/x/rollback", headers=ADMIN).status_code == 503


@pytest.mark.parametrize(
    ("base_url", "origin", "status", "header"),
    [
        ("http://127.0.0.1:8000", None, 503, None),
        ("http://localhost:9000", "http://localhost:3000", 503, None),
        ("http://[::1]:8000", "http://127.0.0.1:8000", 503, None),
        ("http://evil.example:8000", None, 403, "Host"),  # DNS rebinding
        ("http://127.0.0.1.evil.example", None, 403, "Host"),
        ("http://127.0.0.1:8000", "https://evil.example", 403, "Origin"),  # a web page
        ("http://127.0.0.1:8000", "null", 403, "Origin"),
    ],
)
def test_keyless_mode_answers_loopback_callers_only(
    base_url: str, origin: str | None, status: int, header: str | None
) -> None:
    headers = {"origin": origin} if origin else {}
    response = _client(KeyRing({}), base_url).get("/v1/models", headers=headers)
    if header is None:
        assert response.status_code == status, response.text
    else:
        _error(response, 403, f"{header} header")


def test_keyless_probes_answer_any_host() -> None:
    client = _client(KeyRing({}), "http://evil.example")
    assert client.get("/healthz").status_code == 200
    _error(client.get("/metrics"), 403, "Host header")


def test_a_cross_site_form_post_is_refused() -> None:
    client = _client(KeyRing({}))
    response = client.post(
        "/v1/adapters",
        files={"file": ("a.tar.gz", b"\0" * 10)},
        headers={"origin": "https://evil.example"},
    )
    _error(response, 403, "Origin header")


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/docs", "/redoc"])
def test_metrics_and_docs_need_a_key_unless_public(path: str) -> None:
    _error(_client().get(path), 401, "API key")
    assert _client().get(path, headers=INFER).status_code == 200
    public = _client(public_metrics=True, public_docs=True, base_url="http://anywhere")
    assert public.get(path).status_code == 200


def test_openapi_documents_the_key_each_route_needs() -> None:
    schema = _client().get("/openapi.json", headers=INFER).json()
    schemes = schema["components"]["securitySchemes"]
    assert set(schemes) == {"infer key", "admin key"}
    assert schema["paths"]["/v1/adapters"]["get"]["security"] == [{"admin key": []}]
    assert schema["paths"]["/v1/generate"]["post"]["security"] == [{"infer key": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_framework_errors_use_the_envelope() -> None:
    _error(_client().get("/nowhere", headers=INFER), 404, "Not Found")
    _error(_client().delete("/healthz"), 405, "Method Not Allowed")
    _error(_client().get("/nowhere"), 401, "API key")  # with keys, unknown paths need one


def test_an_unexpected_error_is_a_500_envelope_with_no_internal_text(
    log_lines: list[str],
) -> None:
    app = create_app(Settings(), KEYS)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    client = TestClient(app, base_url=LOCAL, raise_server_exceptions=False)
    response = client.get("/boom", headers=INFER | {"x-request-id": "req-42"})
    message = _error(response, 500, "Internal error", "req-42")
    assert "secret" not in message and response.headers["x-request-id"] == "req-42"
    line = next(line for line in log_lines if "Unhandled error" in line)
    assert '"request_id": "req-42"' in line and "secret internal detail" in line


def test_refusals_are_logged_with_the_request_id(log_lines: list[str]) -> None:
    response = _client().get("/v1/models", headers={"x-request-id": "req-7"})
    assert response.status_code == 401 and response.headers["x-request-id"] == "req-7"
    line = next(line for line in log_lines if "Refused GET /v1/models" in line)
    assert '"request_id": "req-7"' in line


def test_an_unexpected_error_mid_stream_ends_it_with_an_internal_error_event(
    log_lines: list[str],
) -> None:
    app = create_app(Settings(), KEYS)

    async def events() -> AsyncIterator[BaseModel]:
        yield Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
        raise RuntimeError("secret internal detail")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return event_stream(events())

    client = TestClient(app, base_url=LOCAL)
    response = client.get("/stream", headers=INFER | {"x-request-id": "req-9"})
    lines = [line for line in response.text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "internal_error" and "req-9" in error["message"]
    assert "secret" not in response.text
    line = next(line for line in log_lines if "Unhandled error while streaming" in line)
    assert '"request_id": "req-9"' in line and "secret internal detail" in line
