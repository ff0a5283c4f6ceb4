"""A server with API keys: roles enforced, graceful shutdown finishes in-flight requests, and
after a restart every version and promotion is back and served."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.adapters import make_random_lora, pack_adapter
from tests.support.server import start_server

pytestmark = pytest.mark.engine

ADMIN = {"Authorization": "Bearer admin-key-123"}
INFER = {"Authorization": "Bearer infer-key-456"}
KEYS = json.dumps({"admin-key-123": "admin", "infer-key-456": "infer"})


def test_roles_shutdown_and_restart(base_model_path: Path, tmp_path: Path) -> None:
    archives = [
        pack_adapter(
            make_random_lora(
                base_model_path, tmp_path / f"v{i}", seed=20 + i, rank=8, target_modules=["q_proj"]
            ),
            tmp_path / f"v{i}.tar.gz",
            {"name": "keeper"},
        )
        for i in (1, 2)
    ]
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOTSWAP_API_KEYS": KEYS}
    server = start_server(
        tmp_path / "first.log", home=home, base_model=base_model_path, args=[], env=env
    )
    try:
        for archive in archives:
            with archive.open("rb") as fh:
                files = {"file": (archive.name, fh.read())}
            assert httpx.post(f"{server.url}/v1/adapters", files=files).status_code == 401
            assert (
                httpx.post(f"{server.url}/v1/adapters", files=files, headers=INFER).status_code
                == 403
            )
            created = httpx.post(
                f"{server.url}/v1/adapters", files=files, headers=ADMIN, timeout=300
            )
            assert created.status_code == 201, created.text
        promote = httpx.post(
            f"{server.url}/v1/adapters/keeper/promote", json={"version": 2}, headers=ADMIN
        )
        assert promote.status_code == 200, promote.text
        wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "admin-key" not in wrong.text
        assert httpx.get(f"{server.url}/v1/models", headers=INFER).status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200

        # A request in flight when SIGTERM arrives still completes.
        outcome: dict[str, httpx.Response] = {}

        def long_request() -> None:
            outcome["response"] = httpx.post(
                f"{server.url}/v1/completions",
                json={"model": "keeper", "prompt": "Once upon a time", "max_tokens": 48},
                headers=INFER,
                timeout=300,
            )

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(1.0)
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete
        assert server.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log.read_text()
        thread.join()
        response = outcome["response"]
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] > 0
        log = server.log.read_text()
        assert "admin-key-123" not in log and "infer-key-456" not in log
    finally:
        server.stop()

    again = start_server(
        tmp_path / "second.log", home=home, base_model=base_model_path, args=[], env=env
    )
    try:
        detail = httpx.get(f"{again.url}/v1/adapters/keeper", headers=ADMIN).json()
        assert detail["promoted_version"] == 2
        assert [v["version"] for v in detail["versions"]] == [1, 2]
        served = httpx.post(
            f"{again.url}/v1/generate",
            json={"adapter": "keeper", "input": "hi", "max_tokens": 4},
            headers=INFER,
            timeout=300,
        )
        assert served.status_code == 200 and served.json()["adapter"]["version"] == 2
    finally:
        again.stop()
