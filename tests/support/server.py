"""Start `hotswap serve` as a real subprocess on a free loopback port and wait until ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 600.0


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL if the process does not exit in `timeout` s; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    grpc_target: str = ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; the exit code."""
        return stop_process(self.process, timeout)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    log: Path,
    *,
    home: Path,
    base_model: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> RunningServer:
    """`hotswap serve` with its registry in `home` and the prepared `base_model` folder."""
    port, grpc_port = free_port(), free_port()
    hotswap = Path(sys.executable).parent / "hotswap"
    env = {
        **os.environ,
        "HOTSWAP_HOME": str(home),
        "HOTSWAP_BASE_MODEL": str(base_model),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(hotswap), "serve", "--port", str(port), "--grpc-port", str(grpc_port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    running = RunningServer(
        process=process,
        url=f"http://127.0.0.1:{port}",
        log=log,
        grpc_target=f"127.0.0.1:{grpc_port}",
    )
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"hotswap serve exited ({process.returncode}):\n{running.log_tail()}"
            )
        try:
            if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(1)
    running.stop()
    raise RuntimeError(f"hotswap serve not ready in {ready_timeout_s}s:\n{running.log_tail()}")
