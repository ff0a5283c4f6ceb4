"""One real server with API keys for the whole package, and the witnesses of every hostile
request: a `/healthz` prober, a loopback listener counting outbound connections, a secret
file whose marker must never come back, and the registry as it was before."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.security.payloads import ADMIN_KEY, INFER_KEY, KEYS_ENV, MB, Sent, Target
from tests.security.watch import HealthProbe, OutsideListener
from tests.security.wire import send
from tests.support.server import RunningServer, start_server

UPLOAD_CAP = 8 * MB  # the real adapter is ~2 MB; 32 MB uploads are over the cap
HEALTHZ_WITHIN_S = 1.0
SERVER_ENV = {"HOTSWAP_API_KEYS": KEYS_ENV, "HOTSWAP_MAX_UPLOAD_BYTES": str(UPLOAD_CAP)}


@pytest.fixture(scope="package")
def outside() -> Iterator[OutsideListener]:
    listener = OutsideListener()
    yield listener
    listener.close()


@pytest.fixture(scope="package")
def target(
    outside: OutsideListener,
    lora_folders: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Target:
    marker = f"hotswap-secret-{uuid.uuid4().hex}"
    secret = tmp_path_factory.mktemp("outside-the-store") / "secret.json"
    secret.write_text(json.dumps({"type": "string", "enum": [marker]}))
    return Target(outside.url, secret, marker, lora_folders["alpha"])


@pytest.fixture(scope="package")
def secure_server(
    base_model_path: Path,
    lora_folders: dict[str, Path],
    target: Target,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    """`hotswap serve` with an admin and an infer key, serving the adapter `alpha`."""
    home = tmp_path_factory.mktemp("secure-server")
    running = start_server(
        home / "server.log",
        home=home,
        base_model=base_model_path,
        args=[f"--adapter=alpha={lora_folders['alpha']}"],
        env=SERVER_ENV,
    )
    try:
        yield running
    finally:
        running.stop()
        log = running.log.read_text(errors="replace")
        assert target.marker not in log, "the secret file was read (its marker is in the log)"


@pytest.fixture(scope="package")
def channel(secure_server: RunningServer) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 * MB)]
    with grpc.insecure_channel(secure_server.grpc_target, options=options) as channel:
        yield channel


def bearer(key: str | None) -> tuple[tuple[str, str], ...]:
    return () if key is None else (("authorization", f"Bearer {key}"),)


class Witness:
    """Sends hostile requests and keeps every answer, to check afterwards that none of them
    carried the secret marker."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=120)
        self.answers: list[str] = []

    def send(self, sent: Sent) -> httpx.Response:
        response = send(self.http, sent)
        self.answers.append(response.text)
        return response

    def grpc(self, call: Any, request: Any, key: str | None) -> tuple[grpc.StatusCode, Any]:
        """(status, reply or error details) of a unary or client-streaming call."""
        try:
            reply = call(request, metadata=bearer(key), timeout=120)
        except grpc.RpcError as exc:
            self.answers.append(str(exc.details()))
            return exc.code(), exc.details()
        self.answers.append(str(reply))
        return grpc.StatusCode.OK, reply

    def registry(self) -> list[dict[str, Any]]:
        response = self.http.get("/v1/adapters", headers=_auth(ADMIN_KEY))
        assert response.status_code == 200, response.text
        return list(response.json())

    def assert_serving(self) -> None:
        """The registry lists, `/v1/models` answers and `alpha` resolves to its version 1."""
        models = self.http.get("/v1/models", headers=_auth(INFER_KEY))
        assert models.status_code == 200, models.text
        assert "alpha" in {m["id"] for m in models.json()["data"]}
        answer = self.http.post(
            "/v1/generate",
            json={"adapter": "alpha", "input": "Hi", "max_tokens": 1},
            headers=_auth(INFER_KEY),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["adapter"] == {"name": "alpha", "version": 1}


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def witness(
    secure_server: RunningServer, outside: OutsideListener, target: Target
) -> Iterator[Witness]:
    """Around one test: `/healthz` answered within 1 s throughout, the registry unchanged and
    serving, no outbound connection, and no answer carrying the secret file's marker."""
    witness = Witness(secure_server)
    before = witness.registry()
    connections = outside.connections
    with HealthProbe(secure_server.url) as probe:
        yield witness
        witness.assert_serving()
        assert witness.registry() == before
    witness.http.close()
    assert probe.probes > 0
    assert probe.slowest_s < HEALTHZ_WITHIN_S, f"/healthz took {probe.slowest_s:.2f} s"
    assert outside.connections == connections, "the server connected to the outside listener"
    leaked = [answer[:200] for answer in witness.answers if target.marker in answer]
    assert not leaked, f"the secret file's content came back: {leaked}"
