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
The fallback engines a guard checks for (`fallback_engines`) are imported by each worker before
it reports ready: xgrammar's import alone costs about 4 CPU seconds, which would otherwise be
charged to a worker's first check and refuse (and cache) a schema it compiles in a second.

Size: the worker measures the compiled index (its serialized bytes); one over `max_grammar_mb`
is refused, since the engine keeps what it compiles in memory (see `engine_grammar_cache`).

Verdicts, refusals included, are cached by the sha256 of the canonical schema JSON in a
bounded LRU; identical schemas in flight at the same time are compiled once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from server.structured.budget import DocumentBudget
from server.structured.engine_extension import FallbackEngine
from server.structured.errors import RefusalReason
from server.structured.vocabulary import DEFAULT_BUILD_TIMEOUT_S, ensure_vocabulary_file
from server.structured.workers import WorkerPool, WorkerProcess

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_LIMIT_MB = 2048
DEFAULT_CACHE_SIZE = 1024
DEFAULT_MAX_GRAMMAR_MB = 128
DEFAULT_MAX_WAITING = 16
WALL_TIMEOUT_FACTOR = 3.0

CheckMode = FallbackEngine | Literal["shortest"] | None
"""What a check asks of the worker: outlines' compile (None), that plus the shortest document
(`"shortest"`), or a fallback engine's compile."""


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
    min_tokens: int | None = None
    """Fewest tokens of a complete document, end-of-sequence included (`min_tokens` checks
    only: plain checks leave it None)."""
    transient: bool = False
    """A refusal caused by the machine (the wall-clock limit under load): not cached."""
    cached: bool = False

    def as_cached(self) -> CompileVerdict:
        return dataclasses.replace(self, cached=True)


def schema_digest(schema: Any) -> str:
    """sha256 of the canonical JSON of a schema (sorted keys, compact separators)."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CompileGuard:
    """Compiles schemas for the outlines backend in sandboxed worker processes.

    `check_sync` blocks; `check` is the same for asyncio (runs in the guard's own threads, so
    the event loop is never blocked). Call `start()` at server start-up, from a thread
    (`await asyncio.to_thread(guard.start)`): it builds the vocabulary cache (about 30-60 s the
    first time for a tokenizer, with vLLM's own code) and warms a worker; `close()` at shutdown.
    Errors starting a worker or building the vocabulary raise (RuntimeError, VocabularyError):
    the server cannot vouch for any schema then and should answer 503. When `workers +
    max_waiting` compilations are already running or waiting, `check` raises `WorkersBusy`
    (a RuntimeError) at once rather than queueing without limit.
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
        max_waiting: int = DEFAULT_MAX_WAITING,
        cache_size: int = DEFAULT_CACHE_SIZE,
        vocab_cache_dir: Path | None = None,
        vocab_build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
        fallback_engines: Sequence[FallbackEngine] = (),
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
        self.fallback_engines = tuple(fallback_engines)
        self._pool = WorkerPool("compile guard", self._spawn, workers, max_waiting)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, CompileVerdict] = OrderedDict()
        self._inflight: dict[str, Future[CompileVerdict]] = {}
        self._vocab_file: Path | None = None
        self.hits = 0
        self.misses = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Build (or find) the vocabulary file and start one worker, so the first check is fast."""
        self._ensure_vocab()
        self._pool.warm()

    def close(self) -> None:
        """Stop every worker process and the guard's threads. Idempotent."""
        self._pool.close()

    def __enter__(self) -> CompileGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return self._pool.worker_pids()

    # -- checks ---------------------------------------------------------------------------
    def cached(self, schema: Any, mode: CheckMode = None) -> CompileVerdict | None:
        """The cached verdict for `schema` (of the check `mode` asks for), without compiling."""
        try:
            digest = schema_digest(schema)
        except (TypeError, ValueError):
            return None
        with self._lock:
            return self._cache_get(_cache_key(digest, mode))

    def check_sync(self, schema: Any, mode: CheckMode = None) -> CompileVerdict:
        """Compile `schema` (as vLLM will receive it) in a worker, or answer from the cache.
        `mode` a fallback engine: check that this engine compiles it instead (and measure the
        longest document where the schema's regex can); `"shortest"`: also measure the
        shortest document (`min_tokens`), under twice the limits."""
        try:
            digest = schema_digest(schema)
        except (TypeError, ValueError) as exc:
            return CompileVerdict(
                ok=False, digest="", reason=RefusalReason.INVALID_SCHEMA, message=str(exc)
            )
        digest = _cache_key(digest, mode)
        with self._lock:
            if self._pool.closed:
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
            verdict = self._compile(schema, digest, mode)
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

    async def check(self, schema: Any, mode: CheckMode = None) -> CompileVerdict:
        """`check_sync` for asyncio: cache hits answer at once, compiles run in guard threads
        (`WorkersBusy` when too many wait)."""
        hit = self.cached(schema, mode)
        if hit is not None:
            return hit
        return await self._pool.submit(self.check_sync, schema, mode)

    def min_tokens_sync(self, schema: Any) -> int | None:
        """The fewest tokens a complete document of `schema` takes, end-of-sequence included
        (`completions.ShortestCompletions`, measured in a worker under twice the compile
        limits); None when it cannot be measured within them."""
        verdict = self.check_sync(schema, "shortest")
        return verdict.min_tokens if verdict.ok else None

    async def min_tokens(self, schema: Any) -> int | None:
        """`min_tokens_sync` for asyncio, in the guard's threads (`WorkersBusy` when too many
        wait)."""
        verdict = await self.check(schema, "shortest")
        return verdict.min_tokens if verdict.ok else None

    # -- internals ------------------------------------------------------------------------
    def _cache_get(self, digest: str) -> CompileVerdict | None:
        verdict = self._cache.get(digest)
        if verdict is None:
            return None
        self._cache.move_to_end(digest)
        self.hits += 1
        return verdict.as_cached()

    def _ensure_vocab(self) -> Path:
        if self._vocab_file is None:
            self._vocab_file = ensure_vocabulary_file(
                self.model_path, self.vocab_cache_dir, self.vocab_build_timeout_s
            )
        return self._vocab_file

    def _spawn(self) -> WorkerProcess:
        args = [str(self._ensure_vocab()), *self.fallback_engines]
        return WorkerProcess("server.structured._worker", self.memory_limit_mb, args)

    def _compile(self, schema: Any, digest: str, mode: CheckMode) -> CompileVerdict:
        try:
            schema_json = json.dumps(schema)  # what vLLM sends outlines
        except (TypeError, ValueError) as exc:
            return CompileVerdict(
                ok=False, digest=digest, reason=RefusalReason.INVALID_SCHEMA, message=str(exc)
            )
        worker = self._pool.acquire()
        started = time.perf_counter()
        shortest = mode == "shortest"
        fallback = None if shortest else mode
        scale = 2 if shortest else 1  # the table costs about one more compilation
        answer = worker.call(
            {"schema": schema_json, "shortest": shortest, "fallback": fallback},
            scale * self.timeout_s,
            scale * self.wall_timeout_s,
        )
        elapsed = time.perf_counter() - started
        if answer.stopped in ("cpu", "wall"):
            self._pool.retire(worker)
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
            self._pool.release(worker)
            return self._verdict(answer.message, digest)
        if worker.alive():  # answered, then exiting (after a MemoryError)
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        sig = worker.exit_signal()
        self._pool.retire(worker)
        if self._pool.closed:
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
            grammar_bytes = answer.get("grammar_bytes")  # none for a fallback engine's check
            if grammar_bytes is not None and grammar_bytes > self.max_grammar_mb << 20:
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
                min_tokens=answer.get("min_tokens"),
            )
        return CompileVerdict(
            ok=False,
            digest=digest,
            reason=RefusalReason(answer.get("reason", RefusalReason.CRASHED.value)),
            message=str(answer.get("message", "")),
        )


def _cache_key(digest: str, mode: CheckMode) -> str:
    return digest if mode is None else f"{mode}:{digest}"


__all__ = ["CompileGuard", "CompileVerdict", "schema_digest"]
