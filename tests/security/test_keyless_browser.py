"""Keyless (loopback) mode against web pages: the real app behind uvicorn on a loopback
port, without keys and without an engine (every check here happens at the edge, before a
route runs). A page on another site cannot reach it through DNS rebinding (`Host`) or a
cross-site post (`Origin`, a form or text body)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.auth import KeyRing
from server.http.app import create_app
from server.settings import Settings
from tests.security.expect import assert_envelope
from tests.support.server import free_port

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of the keyless app on 127.0.0.1 (lifespan off: no engine, no gRPC)."""
    settings = Settings(home=Path(tmp_path_factory.mktemp("keyless")))
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, KeyRing({})),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    server.should_exit = True
    thread.join()


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "needle"),
    [
        pytest.param("GET", "/v1/models", {"host": "evil.example"}, "Host", id="rebound-host"),
        pytest.param(
            "GET", "/v1/models", {"host": "127.0.0.1.evil.example"}, "Host", id="lookalike-host"
        ),
        pytest.param("GET", "/v1/models", {"host": "localhost@evil"}, "Host", id="userinfo-host"),
        pytest.param(
            "POST", "/v1/chat/completions", {**JSON, "origin": EVIL}, "Origin", id="foreign-origin"
        ),
        pytest.param(
            "POST", "/v1/generate", {**JSON, "origin": "null"}, "Origin", id="sandboxed-origin"
        ),
        pytest.param(
            "POST",
            "/v1/adapters",
            {"content-type": "multipart/form-data; boundary=x", "origin": EVIL},
            "Origin",
            id="cross-site-upload",
        ),
        pytest.param(
            "POST",
            "/v1/adapters/alpha/promote",
            {"content-type": "text/plain", "origin": EVIL},
            "Origin",
            id="cross-site-text-post",
        ),
    ],
)
def test_web_pages_are_refused(
    keyless: httpx.Client, method: str, path: str, headers: dict[str, str], needle: str
) -> None:
    response = keyless.request(method, path, headers=headers, content=b"{}")
    assert response.status_code == 403, response.text
    assert_envelope(403, response.json(), (needle,))


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"input": "hi"}'),
        ("application/x-www-form-urlencoded", b"input=hi"),
        ("multipart/form-data; boundary=x", b"--x--"),
    ],
)
def test_simple_cross_site_bodies_are_refused(
    keyless: httpx.Client, content_type: str, body: bytes
) -> None:
    """The bodies a page may post without a CORS preflight (no `Origin` sent, as by old or
    privacy-minded browsers) are not JSON: 415."""
    response = keyless.post("/v1/generate", headers={"content-type": content_type}, content=body)
    assert response.status_code == 415, response.text
    assert_envelope(415, response.json(), ("application/json",))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"host": "localhost"},
        {"host": "[::1]:8000"},
        {"origin": "http://localhost:3000"},
        {"origin": "http://127.0.0.1"},
    ],
)
def test_loopback_callers_get_through(keyless: httpx.Client, headers: dict[str, str]) -> None:
    """Past the edge: the engine-starting 503 of a route, not a 403."""
    response = keyless.get("/v1/models", headers=headers)
    assert response.status_code == 503, response.text
