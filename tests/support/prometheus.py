"""A real Prometheus on a free loopback port, scraping given targets with given rule files.

`prometheus` and `promtool` are found on PATH (Debian/Ubuntu: `apt-get install prometheus`,
which `make install` does where they are missing). The package may also enable a system
service; these helpers never use it: every test run starts its own process, with its own
temporary storage, and stops it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import free_port, stop_process

READY_TIMEOUT_S = 60.0
INSTALL_HINT = "install Prometheus: `make prometheus` (Debian/Ubuntu: apt-get install prometheus)"


def tool(name: str) -> str | None:
    """Path of `prometheus` or `promtool` on PATH, or None when it is not installed."""
    return shutil.which(name)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `promtool` with `args`; raises FileNotFoundError naming the fix when it is absent."""
    path = tool("promtool")
    if path is None:
        raise FileNotFoundError(f"promtool is not on PATH: {INSTALL_HINT}")
    return subprocess.run(
        [path, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its HTTP API answered with an error."""


@dataclass
class RunningPrometheus:
    process: subprocess.Popen[bytes]
    url: str
    workdir: Path
    log: Path

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET `/api/v1/<path>`; the whole JSON answer (status, data or errorType/error)."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body: dict[str, Any] = response.json()
        return body

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time; the whole JSON answer."""
        return self.api("query", query=expr)

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll `expr` until it returns a non-empty result; that result."""
        deadline = time.monotonic() + timeout
        answer: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = self.query(expr)
            if answer.get("status") == "success" and answer["data"]["result"]:
                return list(answer["data"]["result"])
            time.sleep(0.5)
        raise PrometheusError(f"{expr!r} still empty after {timeout}s: {answer}\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        return stop_process(self.process, timeout)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def write_config(
    workdir: Path,
    targets: list[str],
    rule_files: list[Path],
    *,
    job: str = "hotswap",
    interval: str = "1s",
) -> Path:
    """A prometheus.yml in `workdir` scraping `targets` (host:port) and evaluating rules
    every `interval`; the rule files are copied next to it."""
    names = []
    for rule_file in rule_files:
        shutil.copy(rule_file, workdir / rule_file.name)
        names.append(rule_file.name)
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": names,
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: no YAML writer needed
    return path


def start_prometheus(
    workdir: Path,
    targets: list[str],
    rule_files: list[Path],
    *,
    job: str = "hotswap",
    interval: str = "1s",
) -> RunningPrometheus:
    """Start `prometheus` on 127.0.0.1:<free port> with storage in `workdir/data`; returns
    once `/-/ready` answers 200."""
    binary = tool("prometheus")
    if binary is None:
        raise FileNotFoundError(f"prometheus is not on PATH: {INSTALL_HINT}")
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir, targets, rule_files, job=job, interval=interval)
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    running = RunningPrometheus(
        process=process, url=f"http://127.0.0.1:{port}", workdir=workdir, log=log
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited ({process.returncode}):\n{running.log_tail()}"
            )
        try:
            if httpx.get(f"{running.url}/-/ready", timeout=2).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    running.stop()
    raise PrometheusError(f"prometheus not ready in {READY_TIMEOUT_S}s:\n{running.log_tail()}")
