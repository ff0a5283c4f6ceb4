"""The compile guard on the real model's vocabulary: accepts, refuses, kills, caches."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from server.structured import (
    CompileGuard,
    RefusalReason,
    SchemaLimits,
    bound_schema,
    schema_digest,
)
from server.structured.vocabulary import load_vocabulary, read_vocabulary_file, vocabulary_file
from tests.structured.conftest import CORPUS

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tier": {"enum": ["free", "pro"]},
    },
    "required": ["name", "age"],
}
# Compiles for minutes and grows by about a megabyte per character: hostile on both limits.
# xgrammar's compile grows with the square of the length too: about 16 CPU seconds here.
HOSTILE = bound_schema({"type": "string", "maxLength": 6000})
# Over the default 5 CPU seconds for outlines; under half a second for either fallback engine.
FALLBACK_ONLY = bound_schema({"type": "string", "maxLength": 1000})


def _gone(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def test_normal_schema_compiles_and_is_cached(guard: CompileGuard) -> None:
    bounded = bound_schema(PERSON)
    started = time.perf_counter()
    verdict = guard.check_sync(bounded)
    first = time.perf_counter() - started
    assert verdict.ok, verdict
    assert verdict.reason is None and not verdict.cached
    assert verdict.compile_s is not None and verdict.compile_s > 0
    assert verdict.compile_cpu_s is not None and verdict.compile_cpu_s > 0
    assert verdict.budget is not None and verdict.budget.max_tokens is not None
    assert verdict.budget.max_tokens >= len('{"name":"","age":0}') + 1
    assert verdict.grammar_bytes is not None and verdict.grammar_bytes > 0
    assert verdict.digest == schema_digest(bounded)

    started = time.perf_counter()
    again = guard.check_sync(bounded)
    second = time.perf_counter() - started
    assert again.ok and again.cached and again.budget == verdict.budget
    assert second < first / 10
    # the digest is canonical: key order does not matter
    assert guard.check_sync(dict(reversed(list(bounded.items())))).cached


def test_refusals_from_outlines_are_cached(guard: CompileGuard) -> None:
    raw = {"type": "string", "format": "hostname"}  # outlines' own format list lacks it
    verdict = guard.check_sync(raw)
    assert not verdict.ok and verdict.reason is RefusalReason.UNSUPPORTED
    assert "hostname" in verdict.message
    assert guard.check_sync(raw).cached
    invalid = {"type": "object", "properties": {"a": {"description": "no type"}}}
    assert guard.check_sync(invalid).reason is RefusalReason.UNSUPPORTED


def test_corpus_sample_compiles(guard: CompileGuard) -> None:
    names = {
        "sentiment",
        "banking77_like",
        "login_event",
        "tuple_point",
        "linked_list_recursive",
        "oneof_discriminated",
        "pattern_phone_e164",
        "draft_07_object",
    }
    sample = [e for e in CORPUS if e["name"] in names]
    assert len(sample) == len(names)
    for entry in sample:
        verdict = guard.check_sync(bound_schema(entry["schema"]))
        assert verdict.ok, (entry["name"], verdict)


def test_timeout_kills_the_worker_and_is_cached(base_model_path: Path) -> None:
    with CompileGuard(base_model_path, timeout_s=0.5, wall_timeout_s=60.0) as guard:
        guard.start()
        (pid,) = guard.worker_pids()
        started = time.perf_counter()
        verdict = guard.check_sync(HOSTILE)
        elapsed = time.perf_counter() - started
        assert verdict.reason is RefusalReason.TIMEOUT, verdict
        assert not verdict.transient  # CPU-bound: a property of the schema, cached
        assert elapsed < 60
        assert _wait_gone(pid), "the timed-out worker is still alive"
        assert guard.worker_pids() == []
        started = time.perf_counter()
        assert guard.check_sync(HOSTILE).cached
        assert time.perf_counter() - started < 0.1
        # a fresh worker takes over
        assert guard.check_sync({"type": "boolean"}).ok
        assert len(guard.worker_pids()) == 1


def test_memory_limit_kills_the_worker(base_model_path: Path) -> None:
    with CompileGuard(
        base_model_path, timeout_s=120.0, wall_timeout_s=300.0, memory_limit_mb=150
    ) as guard:
        guard.start()
        (pid,) = guard.worker_pids()
        verdict = guard.check_sync(HOSTILE)
        assert verdict.reason is RefusalReason.MEMORY, verdict
        assert "150 MB" in verdict.message
        assert _wait_gone(pid)
        assert guard.check_sync(HOSTILE).cached


def test_a_grammar_over_the_size_limit_is_refused(base_model_path: Path) -> None:
    """The engine caches what it compiles: a schema whose index is too large never gets there."""
    text = {"type": "string", "maxLength": 64}
    schema = bound_schema({"type": "object", "properties": {"a": text}, "required": ["a"]})
    with CompileGuard(base_model_path, timeout_s=30.0, wall_timeout_s=120.0) as roomy:
        accepted = roomy.check_sync(schema)
    assert accepted.ok and accepted.grammar_bytes is not None
    assert accepted.grammar_bytes > 1 << 20, accepted.grammar_bytes
    with CompileGuard(
        base_model_path, timeout_s=30.0, wall_timeout_s=120.0, max_grammar_mb=1
    ) as strict:
        verdict = strict.check_sync(schema)
        assert not verdict.ok and verdict.reason is RefusalReason.MEMORY, verdict
        assert "the limit is 1 MB" in verdict.message
        assert verdict.grammar_bytes == accepted.grammar_bytes
        assert strict.check_sync(schema).cached
        assert strict.check_sync({"enum": ["a", "b"]}).ok


async def test_async_check_does_not_block_the_event_loop(base_model_path: Path) -> None:
    with CompileGuard(base_model_path, timeout_s=30.0, wall_timeout_s=120.0) as guard:
        await asyncio.to_thread(guard.start)
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        text = {"type": "string", "maxLength": 64}  # a compile of about a second
        schema = bound_schema(
            {"type": "object", "properties": {"a": text, "b": text}, "required": ["a", "b"]}
        )
        started = time.perf_counter()
        first, second = await asyncio.gather(guard.check(schema), guard.check(schema))
        elapsed = time.perf_counter() - started
        done.set()
        await tick
        assert first.ok and second.ok
        assert guard.misses == 1  # the same schema in flight twice compiles once
        assert elapsed > 0.2
        assert len(gaps) > 5
        assert max(gaps) < max(0.5, elapsed / 3), max(gaps)
        assert (await guard.check(schema)).cached


def test_close_leaves_no_process_or_thread(base_model_path: Path) -> None:
    # the threads alive before, not their count: another test's may end meanwhile
    threads_before = set(threading.enumerate())
    guard = CompileGuard(base_model_path, workers=2)
    guard.start()
    verdicts = asyncio.run(_two_checks(guard))
    assert all(v.ok for v in verdicts)
    pids = guard.worker_pids()
    assert 1 <= len(pids) <= 2
    guard.close()
    guard.close()  # idempotent
    assert all(_wait_gone(pid) for pid in pids)
    left = [thread for thread in threading.enumerate() if thread not in threads_before]
    assert not left, left
    me = psutil.Process()
    assert not set(pids) & {child.pid for child in me.children(recursive=True)}
    with pytest.raises(RuntimeError):
        guard.check_sync({"type": "null"})


async def _two_checks(guard: CompileGuard) -> list[Any]:
    return list(
        await asyncio.gather(guard.check({"enum": ["a", "b"]}), guard.check({"type": "null"}))
    )


def test_vocabulary_is_built_by_vllms_code(base_model_path: Path, guard: CompileGuard) -> None:
    """The cached vocabulary rebuilds the exact `outlines_core.Vocabulary` vLLM made."""
    path = vocabulary_file(base_model_path, guard.vocab_cache_dir)
    assert path.is_file()  # built by the session guard
    data = read_vocabulary_file(path)
    assert data["eos_token_id"] == 2
    assert 49_000 < len(data["tokens"]) <= 49_152
    vocabulary = load_vocabulary(path)
    digest = int(hashlib.sha256(repr(vocabulary).encode("utf-8")).hexdigest(), 16)
    assert str(digest) == data["vllm_vocabulary_hash"]


def test_limits_object_is_serialisable() -> None:
    limits = SchemaLimits(max_string_length=10)
    assert SchemaLimits.model_validate_json(limits.model_dump_json()) == limits


TWO_NAMES = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "city": {"type": "string", "maxLength": 40},
    },
    "required": ["name", "city"],
}


def test_the_shortest_document_is_measured_in_tokens_and_cached(guard: CompileGuard) -> None:
    bounded = bound_schema(TWO_NAMES)
    shortest = guard.min_tokens_sync(bounded)
    longest = guard.check_sync(bounded).budget
    assert shortest is not None and longest is not None and longest.max_tokens is not None
    # `{"name":"","city":""}` in a few tokens plus the end, far below the longest (two full
    # 40-character strings at one token per byte)
    assert 3 <= shortest <= 22 < longest.max_tokens
    assert asyncio.run(guard.min_tokens(bounded)) == shortest  # from the cache


@pytest.mark.parametrize("engine", ["guidance", "xgrammar"])
def test_a_fallback_engine_checks_what_outlines_cannot_compile(
    guard: CompileGuard, engine: Any
) -> None:
    verdict = guard.check_sync(FALLBACK_ONLY, engine)
    assert verdict.ok, verdict
    assert verdict.budget is not None and verdict.budget.max_bytes is not None
    assert verdict.budget.max_bytes >= 1000
    assert guard.cached(FALLBACK_ONLY, engine) is not None and guard.cached(FALLBACK_ONLY) is None


def test_a_fallback_engine_is_imported_before_the_first_check_and_held_to_the_limit(
    base_model_path: Path,
) -> None:
    # xgrammar's import takes about 4 CPU seconds: charged to the first check, it would refuse
    # (and cache) a schema that compiles in under half a second
    with CompileGuard(base_model_path, timeout_s=3.0, fallback_engines=["xgrammar"]) as guard:
        guard.start()
        verdict = guard.check_sync(FALLBACK_ONLY, "xgrammar")
        assert verdict.ok, verdict
        assert verdict.compile_cpu_s is not None and verdict.compile_cpu_s < 3.0
        (pid,) = guard.worker_pids()
        refused = guard.check_sync(HOSTILE, "xgrammar")
        assert refused.reason is RefusalReason.TIMEOUT and not refused.transient, refused
        assert _wait_gone(pid)
        assert guard.check_sync(HOSTILE, "xgrammar").cached


def test_a_fallback_engine_refuses_what_it_cannot_compile_either(guard: CompileGuard) -> None:
    verdict = guard.check_sync({"type": "string", "pattern": "^(a)\\1$"}, "guidance")
    assert not verdict.ok and verdict.reason is RefusalReason.UNSUPPORTED
    assert "guidance cannot compile it" in verdict.message
