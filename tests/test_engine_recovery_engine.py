"""The engine core is killed under load: every request in flight ends at once (503, an error
event, gRPC UNAVAILABLE), /readyz turns 503, the engine comes back by itself with its
adapter, and no engine process outlives the server."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import inference_pb2_grpc
from tests.support.adapters import make_random_lora
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.engine

CLIENT_TIMEOUT_S = 120.0  # a request still open this long after the kill has hung
ENDED_WITHIN_S = 10.0  # how soon after the kill every request in flight must have ended
NOTICED_WITHIN_S = 2.0  # how soon after the kill /readyz must answer 503
RECOVERY_TIMEOUT_S = 600.0  # as long as a first start may take on a loaded machine
ADAPTER = "keeper"


@dataclass(frozen=True)
class Outcome:
    client: str
    started: float
    ended: float
    result: str  # "200", an HTTP status, "stream-error-<code>", or a gRPC status name


def _completion(url: str, model: str) -> str:
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": "Once upon a time", "max_tokens": 48},
        timeout=CLIENT_TIMEOUT_S,
    )
    return str(response.status_code)


def _streamed_chat(url: str, model: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story about a cat."}],
        "max_tokens": 64,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT_S
    ) as response:
        if response.status_code != 200:
            return str(response.status_code)
        for line in response.iter_lines():
            if line.startswith("data: {") and '"error"' in line:
                return f"stream-error-{json.loads(line[6:])['error']['code']}"
    return "200"


def _grpc_generate(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        try:
            stub.Generate(
                pb.GenerateRequest(adapter=ADAPTER, text="Once upon a time", max_tokens=48),
                timeout=CLIENT_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "OK"


class Load:
    """Client threads sending requests back to back until stopped, each outcome recorded."""

    def __init__(self, server: RunningServer) -> None:
        url = server.url
        self.clients: dict[str, Callable[[], str]] = {
            "completion-base": lambda: _completion(url, "base"),
            "completion-adapter": lambda: _completion(url, ADAPTER),
            "completion-adapter-2": lambda: _completion(url, ADAPTER),
            "stream-base": lambda: _streamed_chat(url, "base"),
            "stream-adapter": lambda: _streamed_chat(url, ADAPTER),
            "grpc-adapter": lambda: _grpc_generate(server.grpc_target),
        }
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, send), daemon=True)
            for name, send in self.clients.items()
        ]

    def _run(self, name: str, send: Callable[[], str]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = send()
            except httpx.HTTPError as exc:
                result = type(exc).__name__
            self.outcomes.append(Outcome(name, started, time.monotonic(), result))
            if result not in ("200", "OK"):
                time.sleep(0.5)  # no hot loop against a server that is recovering

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S + 10)
            assert not thread.is_alive(), "a client request hung"


def engine_processes(server: RunningServer) -> list[psutil.Process]:
    """The server's vLLM processes (engine core and its workers)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if p.name().startswith("VLLM::")]


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def restarts_ok(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('hotswap_engine_restarts_total{outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_engine_core_killed_under_load_recovers(base_model_path: Path, tmp_path: Path) -> None:
    folder = make_random_lora(
        base_model_path, tmp_path / ADAPTER, seed=7, rank=8, target_modules=["q_proj", "v_proj"]
    )
    server = start_server(
        tmp_path / "server.log",
        home=tmp_path / "home",
        base_model=base_model_path,
        args=[f"--adapter={ADAPTER}={folder}"],
        env={"HOTSWAP_SERVED_MODEL_NAME": "base"},
    )
    all_engines: list[psutil.Process] = []  # to be gone once the server stopped
    try:
        version = httpx.get(f"{server.url}/v1/adapters/{ADAPTER}").json()["promoted_version"]
        old_engines = engine_processes(server)
        all_engines += old_engines
        (core,) = [p for p in old_engines if "EngineCor" in p.name()]

        load = Load(server)
        load.start()
        assert wait_until(lambda: len(load.outcomes) >= 3, timeout=120), load.outcomes
        time.sleep(1.0)  # every client has a request running now
        killed_at = time.monotonic()
        core.send_signal(signal.SIGKILL)

        readiness: list[tuple[float, int]] = []

        def ready_again() -> bool:
            status = httpx.get(f"{server.url}/readyz", timeout=5).status_code
            readiness.append((time.monotonic() - killed_at, status))
            return status == 200

        # vLLM's process monitor notices the death within moments, not at the kill itself
        assert wait_until(lambda: not ready_again(), timeout=NOTICED_WITHIN_S, step=0.02)
        noticed_s = readiness[-1][0]
        readiness.clear()
        during = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "base", "prompt": "Hi", "max_tokens": 4},
            timeout=10,
        )
        assert during.status_code == 503, during.text
        assert during.headers["Retry-After"] and "engine" in during.json()["error"]["message"]
        load.stop()  # joins every client: none may hang

        in_flight = [o for o in load.outcomes if o.started < killed_at < o.ended]
        ended = {o.client: (o.result, round(o.ended - killed_at, 2)) for o in in_flight}
        print(f"\nin flight at the kill (result, s after the kill): {ended}")
        assert {o.client for o in in_flight} == set(load.clients)  # all six were running
        for outcome in in_flight:
            assert outcome.ended - killed_at < ENDED_WITHIN_S, outcome
            assert outcome.result in ("200", "OK", "503", "stream-error-503", "UNAVAILABLE"), (
                outcome
            )
        failed = [o for o in in_flight if o.result not in ("200", "OK")]
        assert failed, "the kill failed no request in flight"
        assert any(o.result == "stream-error-503" for o in failed)
        assert any(o.result == "UNAVAILABLE" for o in failed)

        assert wait_until(ready_again, timeout=RECOVERY_TIMEOUT_S, step=0.5), server.log_tail()
        print(f"kill -> /readyz 503: {noticed_s:.2f} s, -> 200: {readiness[-1][0]:.1f} s")
        assert all(status == 503 for _, status in readiness[:-1])

        # Served again, base and adapter, the same version; the old engine is gone.
        for model in ("base", ADAPTER):
            assert _completion(server.url, model) == "200"
            assert _streamed_chat(server.url, model) == "200"
        assert _grpc_generate(server.grpc_target) == "OK"
        served = httpx.post(
            f"{server.url}/v1/generate",
            json={"adapter": ADAPTER, "input": "hi", "max_tokens": 4},
            timeout=CLIENT_TIMEOUT_S,
        )
        assert served.status_code == 200 and served.json()["adapter"]["version"] == version
        assert restarts_ok(server.url) == 1
        assert wait_until(lambda: not running(old_engines), timeout=60), running(old_engines)
        new_engines = engine_processes(server)
        all_engines += new_engines
        assert any("EngineCor" in p.name() for p in new_engines)
    finally:
        if server.process.poll() is None:  # everything the server started must end with it
            all_engines += psutil.Process(server.process.pid).children(recursive=True)
        server.stop()
    assert wait_until(lambda: not running(all_engines), timeout=60), running(all_engines)
