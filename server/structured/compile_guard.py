"""Compile every schema outside the engine, in killable worker processes, before it is served.

vLLM compiles an outlines grammar in a thread of the engine process with a 5 s timeout that
cannot stop the thread: a timed-out compilation keeps running and allocating. Measured here:
19 of 200 real schemas timed out and the engine reached 18 GB and was OOM-killed. The guard
compiles each schema (regex, then token index over the served model's vocabulary, the same
calls as `OutlinesBackend.compile_grammar`) in a worker process with an address-space limit
(RLIMIT_AS) and a wall-clock limit after which the worker is SIGKILLed and replaced. A schema
the guard accepts compiled within those limits; run the engine with a compile timeout above
the guard's (VLLM_REGEX_COMPILATION_TIMEOUT_S) so load spikes do not refuse it twice.

Time limits: `timeout_s` bounds the CPU seconds one compilation may use (the worker's
user+system time, read from /proc while waiting), so a verdict does not depend on how busy the
machine is; `wall_timeout_s` (default 3 x timeout_s) bounds the wall-clock wait. Both kill the
worker. Only CPU-bound refusals are cached: a wall-clock refusal under load is `transient`.

Size: the worker measures the compiled index (its serialized bytes); one over `max_grammar_mb`
is refused, since the engine keeps what it compiles in memory (see `engine_grammar_cache`).

Verdicts, refusals included, are cached by the sha256 of the canonical schema JSON in a
bounded LRU; identical schemas in flight at the same time are compiled once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

from server.structured.budget import DocumentBudget
from server.structured.errors import RefusalReason
from server.structured.vocabulary import DEFAULT_BUILD_TIMEOUT_S, ensure_vocabulary_file

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_LIMIT_MB = 2048
DEFAULT_CACHE_SIZE = 1024
DEFAULT_MAX_GRAMMAR_MB = 128
WALL_TIMEOUT_FACTOR = 3.0
WORKER_START_TIMEOUT_S = 120.0
_POLL_S = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Answer:
    message: dict[str, Any] | None
    stopped: str | None  # None (answered), "cpu", "wall" (killed) or "died"


@dataclass(frozen=True)
class CompileVerdict:
    """Whether a schema compiled within the limits; why not; and what it will cost."""

    ok: bool
    digest: str
    compile_s: float | None = None
    """Seconds to build the regex and the token index (None when refused before or killed)."""
    compile_cpu_s: float | None = None
    """CPU seconds of the same (what the time limit applies to; wall time varies with load)."""
    reason: RefusalReason | None = None
    message: str = ""
    budget: DocumentBudget | None = None
    """Longest document the grammar accepts (chars, bytes; max_tokens for max_tokens checks)."""
    regex_length: int | None = None
    grammar_bytes: int | None = None
    """Size of the compiled token index (serialized; the engine holds about 2.2 times this)."""
    transient: bool = False
    """A refusal caused by the machine (the wall-clock limit under load): not cached."""
    cached: bool = False

    def as_cached(self) -> CompileVerdict:
        return dataclasses.replace(self, cached=True)


def schema_digest(schema: Any) -> str:
    """sha256 of the canonical JSON of a schema (sorted keys, compact separators)."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _Worker:
    """One compile process and its pipes; not thread-safe (the pool hands it to one caller)."""

    def __init__(self, vocab_file: Path, memory_limit_mb: int) -> None:
        env = dict(os.environ)
        repo_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
        env.setdefault("RAYON_NUM_THREADS", "1")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.structured._worker",
                str(vocab_file),
                str(memory_limit_mb),
                str(os.getpid()),
            ],
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
            raise RuntimeError(f"compile worker failed to start: {error}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def compile(self, schema_json: str, cpu_limit_s: float, wall_limit_s: float) -> _Answer:
        """Send one schema; wait for the answer within both limits, else kill the worker."""
        self._next_id += 1
        request = json.dumps({"id": self._next_id, "schema": schema_json}) + "\n"
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(request.encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return _Answer(None, "died")
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
            return _Answer(message, None)
        if self._eof:  # it died on its own: reap it to learn the signal
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            return _Answer(None, "died")
        self.kill()
        return _Answer(None, self._stopped_for or "wall")

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
            logger.error("compile worker %d did not die", self.process.pid)
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


class CompileGuard:
    """Compiles schemas for the outlines backend in sandboxed worker processes.

    `check_sync` blocks; `check` is the same for asyncio (runs in the guard's own threads, so
    the event loop is never blocked). Call `start()` at server start-up, from a thread
    (`await asyncio.to_thread(guard.start)`): it builds the vocabulary cache (about 30-60 s the
    first time for a tokenizer, with vLLM's own code) and warms a worker; `close()` at shutdown.
    Errors starting a worker or building the vocabulary raise (RuntimeError, VocabularyError):
    the server cannot vouch for any schema then and should answer 503.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        wall_timeout_s: float | None = None,
        memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
        max_grammar_mb: int = DEFAULT_MAX_GRAMMAR_MB,
        workers: int = 1,
        cache_size: int = DEFAULT_CACHE_SIZE,
        vocab_cache_dir: Path | None = None,
        vocab_build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
    ) -> None:
        if min(timeout_s, memory_limit_mb, max_grammar_mb, workers) <= 0 or cache_size < 0:
            raise ValueError(
                "timeout_s, memory_limit_mb, max_grammar_mb and workers must be positive"
            )
        self.model_path = Path(model_path)
        self.timeout_s = timeout_s
        self.wall_timeout_s = wall_timeout_s or WALL_TIMEOUT_FACTOR * timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_grammar_mb = max_grammar_mb
        self.cache_size = cache_size
        self.vocab_cache_dir = vocab_cache_dir or Path.home() / ".cache" / "hotswap" / "structured"
        self.vocab_build_timeout_s = vocab_build_timeout_s
        self._workers = workers
        self._idle: Queue[_Worker | None] = Queue()
        for _ in range(workers):
            self._idle.put(None)  # a slot; the process starts on first use
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, CompileVerdict] = OrderedDict()
        self._inflight: dict[str, Future[CompileVerdict]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._vocab_file: Path | None = None
        self._closed = False
        self.hits = 0
        self.misses = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Build (or find) the vocabulary file and start one worker, so the first check is fast."""
        self._ensure_vocab()
        worker = self._acquire()
        self._release(worker)

    def close(self) -> None:
        """Stop every worker process and the guard's threads. Idempotent."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            executor, self._executor = self._executor, None
        for worker in workers:
            worker.stop()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CompileGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._all if w.alive()]

    # -- checks ---------------------------------------------------------------------------
    def cached(self, schema: Any) -> CompileVerdict | None:
        """The cached verdict for `schema`, without compiling."""
        try:
            digest = schema_digest(schema)
        except (TypeError, ValueError):
            return None
        with self._lock:
            return self._cache_get(digest)

    def check_sync(self, schema: Any) -> CompileVerdict:
        """Compile `schema` (as vLLM will receive it) in a worker, or answer from the cache."""
        try:
            digest = schema_digest(schema)
        except (TypeError, ValueError) as exc:
            return CompileVerdict(
                ok=False, digest="", reason=RefusalReason.INVALID_SCHEMA, message=str(exc)
            )
        with self._lock:
            if self._closed:
                raise RuntimeError("the compile guard is closed")
            hit = self._cache_get(digest)
            if hit is not None:
                return hit
            pending = self._inflight.get(digest)
            owner = pending is None
            if pending is None:
                pending = Future()
                self._inflight[digest] = pending
        if not owner:
            return pending.result().as_cached()
        try:
            verdict = self._compile(schema, digest)
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(digest, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self.misses += 1
            if not verdict.transient and self.cache_size:
                self._cache[digest] = verdict
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            self._inflight.pop(digest, None)
        pending.set_result(verdict)
        return verdict

    async def check(self, schema: Any) -> CompileVerdict:
        """`check_sync` for asyncio: cache hits answer at once, compiles run in guard threads."""
        hit = self.cached(schema)
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._get_executor(), self.check_sync, schema)

    # -- internals ------------------------------------------------------------------------
    def _cache_get(self, digest: str) -> CompileVerdict | None:
        verdict = self._cache.get(digest)
        if verdict is None:
            return None
        self._cache.move_to_end(digest)
        self.hits += 1
        return verdict.as_cached()

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the compile guard is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix="hotswap-compile-guard"
                )
            return self._executor

    def _ensure_vocab(self) -> Path:
        if self._vocab_file is None:
            self._vocab_file = ensure_vocabulary_file(
                self.model_path, self.vocab_cache_dir, self.vocab_build_timeout_s
            )
        return self._vocab_file

    def _acquire(self) -> _Worker:
        worker = self._idle.get()
        if worker is not None:
            if worker.alive():
                return worker
            worker.kill()  # reap it
            with self._lock:
                self._all.discard(worker)
        try:
            fresh = _Worker(self._ensure_vocab(), self.memory_limit_mb)
        except BaseException:
            self._idle.put(None)
            raise
        with self._lock:
            if self._closed:
                fresh.stop()
                self._idle.put(None)
                raise RuntimeError("the compile guard is closed")
            self._all.add(fresh)
        return fresh

    def _release(self, worker: _Worker | None) -> None:
        if worker is not None and not worker.alive():
            with self._lock:
                self._all.discard(worker)
            worker.kill()
            worker = None
        self._idle.put(worker)

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
        self._idle.put(None)

    def _compile(self, schema: Any, digest: str) -> CompileVerdict:
        try:
            schema_json = json.dumps(schema)  # what vLLM sends outlines
        except (TypeError, ValueError) as exc:
            return CompileVerdict(
                ok=False, digest=digest, reason=RefusalReason.INVALID_SCHEMA, message=str(exc)
            )
        worker = self._acquire()
        started = time.perf_counter()
        answer = worker.compile(schema_json, self.timeout_s, self.wall_timeout_s)
        elapsed = time.perf_counter() - started
        if answer.stopped in ("cpu", "wall"):
            self._retire(worker)
            cpu = answer.stopped == "cpu"
            return CompileVerdict(
                ok=False,
                digest=digest,
                reason=RefusalReason.TIMEOUT,
                message=(
                    f"compiling the schema needs more than {self.timeout_s:g} s of CPU"
                    if cpu
                    else f"compiling the schema took longer than {self.wall_timeout_s:g} s "
                    "(machine busy); try again"
                ),
                transient=not cpu,
            )
        if answer.message is not None and worker.alive():
            self._release(worker)
            return self._verdict(answer.message, digest)
        if worker.alive():  # answered, then exiting (after a MemoryError)
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        sig = worker.exit_signal()
        self._retire(worker)
        if self._closed:
            raise RuntimeError("the compile guard was closed during the compilation")
        if answer.message is not None:
            return self._verdict(answer.message, digest)
        memory = sig in (signal.SIGABRT, signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS)
        return CompileVerdict(
            ok=False,
            digest=digest,
            reason=RefusalReason.MEMORY if memory else RefusalReason.CRASHED,
            message=(
                f"compiling the schema needs more than {self.memory_limit_mb} MB"
                if memory
                else f"the compile worker died after {elapsed:.1f} s (signal {sig})"
            ),
        )

    def _verdict(self, answer: dict[str, Any], digest: str) -> CompileVerdict:
        if answer.get("ok"):
            grammar_bytes = int(answer["grammar_bytes"])
            if grammar_bytes > self.max_grammar_mb << 20:
                return CompileVerdict(
                    ok=False,
                    digest=digest,
                    reason=RefusalReason.MEMORY,
                    message=f"the compiled grammar takes {grammar_bytes / 2**20:.0f} MB; "
                    f"the limit is {self.max_grammar_mb} MB (bound the schema's strings, "
                    "arrays or patterns more tightly)",
                    grammar_bytes=grammar_bytes,
                )
            return CompileVerdict(
                ok=True,
                digest=digest,
                compile_s=float(answer["compile_s"]),
                compile_cpu_s=float(answer["compile_cpu_s"]),
                budget=DocumentBudget(answer.get("max_chars"), answer.get("max_bytes")),
                regex_length=answer.get("regex_length"),
                grammar_bytes=grammar_bytes,
            )
        return CompileVerdict(
            ok=False,
            digest=digest,
            reason=RefusalReason(answer.get("reason", RefusalReason.CRASHED.value)),
            message=str(answer.get("message", "")),
        )


__all__ = ["CompileGuard", "CompileVerdict", "schema_digest"]
