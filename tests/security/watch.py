"""Witnesses beside a hostile request: a `/healthz` prober that records the slowest answer,
and a loopback listener that counts the connections the server should never make."""

from __future__ import annotations

import math
import socket
import threading
import time
from types import TracebackType

import httpx

PROBE_EVERY_S = 0.1


class HealthProbe:
    """Polls `/healthz` every 100 ms on its own thread while open; `slowest_s` is the longest
    answer (infinite if one failed or took over 5 s)."""

    def __init__(self, url: str) -> None:
        self._url = f"{url}/healthz"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)
        self.slowest_s = 0.0
        self.probes = 0
        self.failure = ""

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = http.get(self._url).status_code == 200
                except httpx.HTTPError as exc:
                    ok, self.failure = False, repr(exc)
                took = time.perf_counter() - started if ok else math.inf
                self.slowest_s = max(self.slowest_s, took)
                self.probes += 1
                self._stop.wait(PROBE_EVERY_S)


class OutsideListener:
    """A TCP listener on 127.0.0.1 standing for the outside world: hostile `$ref`s point at
    it, and `connections` counts every connection it accepted."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outside", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
