"""A pool of killable worker processes speaking JSON lines over pipes.

The parent side (`WorkerProcess`, `WorkerPool`) runs work that may hang or allocate without
bound (compiling a grammar, validating a document against a user's schema) in child processes
that are SIGKILLed when they pass a CPU or wall-clock limit, and replaced. The child side
(`sandbox`, `serve`) caps the child's address space (RLIMIT_AS), makes it die with its parent,
and answers one JSON object per request line.

Protocol: the child is started as `python -m MODULE MEMORY_MB PARENT_PID ARGS...`; it first
answers `{"ready": true, ...}` (or `{"ready": false, "error": ...}`), then answers every
request `{"id": N, ...}` with `{"id": N, ...}`. This module imports only the standard library,
so a child starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
WORKER_START_TIMEOUT_S = 120.0
_POLL_S = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


class WorkersBusy(RuntimeError):
    """More calls wait for a worker than the pool accepts; `str(exc)` is safe to show."""


@dataclass(frozen=True)
class Answer:
    """A worker's answer, or why there is none."""

    message: dict[str, Any] | None
    stopped: str | None
    """None (answered), "cpu" or "wall" (over a limit: killed) or "died" (on its own)."""


class WorkerProcess:
    """One child process and its pipes; not thread-safe (the pool hands it to one caller)."""

    def __init__(self, module: str, memory_limit_mb: int, args: list[str]) -> None:
        env = dict(os.environ)
        repo_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
        env.setdefault("RAYON_NUM_THREADS", "1")
        command = [sys.executable, "-m", module, str(memory_limit_mb), str(os.getpid()), *args]
        self.module = module
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._buffer = b""
        self._next_id = 0
        self._eof = False
        self._stopped_for: str | None = None
        ready = self._read(time.monotonic() + WORKER_START_TIMEOUT_S)
        if not ready or not ready.get("ready"):
            self.kill()
            error = ready.get("error") if ready else "no answer"
            raise RuntimeError(f"worker {module} failed to start: {error}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, request: dict[str, Any], cpu_limit_s: float, wall_limit_s: float) -> Answer:
        """Send one request; wait for the answer within both limits, else kill the worker."""
        self._next_id += 1
        line = json.dumps({**request, "id": self._next_id}) + "\n"
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return Answer(None, "died")
        cpu_start = self.cpu_seconds()
        started = time.monotonic()

        def over_limit() -> str | None:
            if self.cpu_seconds() - cpu_start > cpu_limit_s:
                return "cpu"
            if time.monotonic() - started > wall_limit_s:
                return "wall"
            return None

        message = self._read(started + wall_limit_s + 1.0, over_limit)
        if message is not None:
            return Answer(message, None)
        if self._eof:  # it died on its own: reap it to learn the signal
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            return Answer(None, "died")
        self.kill()
        return Answer(None, self._stopped_for or "wall")

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the worker has used so far."""
        try:
            with open(f"/proc/{self.process.pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            return 0.0

    def _read(
        self, deadline: float, over_limit: Callable[[], str | None] | None = None
    ) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        self._stopped_for = None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], min(remaining, _POLL_S))
            if not readable:
                if over_limit is not None:
                    self._stopped_for = over_limit()
                    if self._stopped_for is not None:
                        return None
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # EOF: the worker died
                self._eof = True
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def exit_signal(self) -> int | None:
        code = self.process.poll()
        return -code if code is not None and code < 0 else None

    def kill(self) -> None:
        """SIGKILL the worker's process group and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            logger.error("worker %d (%s) did not die", self.process.pid, self.module)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def stop(self) -> None:
        """Ask the worker to exit (EOF on stdin), kill it if it lingers."""
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class WorkerPool:
    """`workers` processes started on first use by `spawn`, lent to one call at a time.

    `submit` runs a blocking job in the pool's threads (never on the event loop); when
    `workers + max_waiting` calls are already running or waiting it raises `WorkersBusy`
    at once instead of queueing without limit.
    """

    def __init__(
        self, name: str, spawn: Callable[[], WorkerProcess], workers: int, max_waiting: int
    ) -> None:
        if workers <= 0 or max_waiting < 0:
            raise ValueError("workers must be positive and max_waiting non-negative")
        self.name = name
        self.workers = workers
        self.max_waiting = max_waiting
        self._spawn = spawn
        self._idle: Queue[WorkerProcess | None] = Queue()
        for _ in range(workers):
            self._idle.put(None)  # a slot; the process starts on first use
        self._all: set[WorkerProcess] = set()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self.closed = False

    # -- lifecycle ------------------------------------------------------------------------
    def warm(self) -> None:
        """Start one worker now, so that the first call does not wait for it."""
        self.release(self.acquire())

    def close(self) -> None:
        """Stop every worker process and the pool's threads. Idempotent."""
        with self._lock:
            self.closed = True
            workers = list(self._all)
            self._all.clear()
            executor, self._executor = self._executor, None
        for worker in workers:
            worker.stop()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._all if w.alive()]

    # -- calls ----------------------------------------------------------------------------
    async def submit(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(*args)` in a pool thread; raises `WorkersBusy` when the queue is full,
        RuntimeError when the pool is closed."""
        with self._lock:
            if self.closed:
                raise RuntimeError(f"the {self.name} is closed")
            if self._pending >= self.workers + self.max_waiting:
                raise WorkersBusy(
                    f"the {self.name} is busy: {self._pending} calls are running or waiting "
                    f"(at most {self.workers + self.max_waiting}); retry shortly"
                )
            self._pending += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix=f"hotswap-{self.name}"
                )
            future: Future[T] = self._executor.submit(job, *args)
        future.add_done_callback(self._done)  # also runs when the job is cancelled unstarted
        return await asyncio.wrap_future(future)

    def acquire(self) -> WorkerProcess:
        """A live worker for the calling thread (blocks while all are lent)."""
        worker = self._idle.get()
        if worker is not None:
            if worker.alive():
                return worker
            worker.kill()  # reap it
            with self._lock:
                self._all.discard(worker)
        try:
            fresh = self._spawn()
        except BaseException:
            self._idle.put(None)
            raise
        with self._lock:
            if self.closed:
                fresh.stop()
                self._idle.put(None)
                raise RuntimeError(f"the {self.name} is closed")
            self._all.add(fresh)
        return fresh

    def release(self, worker: WorkerProcess) -> None:
        """Give a worker back; a dead one frees its slot for a fresh process."""
        if not worker.alive():
            self.retire(worker)
            return
        self._idle.put(worker)

    def retire(self, worker: WorkerProcess) -> None:
        """Kill a worker (over a limit, or dead) and free its slot."""
        worker.kill()
        with self._lock:
            self._all.discard(worker)
        self._idle.put(None)

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1


# -- the child's side -----------------------------------------------------------------------
def sandbox(argv: list[str]) -> list[str]:
    """In a worker: die with the parent, cap the address space; returns the remaining args."""
    memory_mb, parent_pid, rest = int(argv[0]), int(argv[1]), argv[2:]
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent_pid:
        os._exit(0)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(10_000)
    return rest


def send(message: dict[str, Any]) -> None:
    """Write one answer line to the parent."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]], ready: dict[str, Any]) -> int:
    """Announce readiness, then answer each request line with `handle`. Out of memory, the
    worker answers and exits (its heap may be in a bad state): the pool starts a fresh one."""
    send({"ready": True, "pid": os.getpid(), **ready})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = handle(request)
        except MemoryError:
            send({"id": request["id"], "ok": False, "reason": "memory", "message": "out of memory"})
            return 3
        send({**answer, "id": request["id"]})
    return 0


__all__ = ["Answer", "WorkerPool", "WorkerProcess", "WorkersBusy", "sandbox", "send", "serve"]
