"""Compile worker: a child process that compiles schemas exactly as vLLM's outlines backend does.

Started by `CompileGuard` as
`python -m server.structured._worker MEMORY_MB PARENT_PID VOCAB_FILE [ENGINE ...]`
(the protocol of `server.structured.workers`); it imports each fallback ENGINE before it reports
ready. For each request `{"id": N, "schema": "<schema as json.dumps wrote it>"}` it answers
`{"id": N, "ok": ...}`;
with `"shortest": true` it also measures the shortest document (`min_tokens`), with
`"fallback": ENGINE` it checks a fallback grammar engine instead of outlines.
Its address space is capped with RLIMIT_AS before anything is loaded, and it dies with its
parent (PR_SET_PDEATHSIG), so a runaway compilation can only kill this process.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from adapters.json_grammar import schema_regex
from server.structured.budget import DocumentBudget, regex_budget
from server.structured.engine_extension import FallbackEngine, fallback_schema
from server.structured.engine_grammar_cache import index_bytes
from server.structured.errors import RefusalReason, SchemaRefusedError
from server.structured.vocabulary import load_vocabulary
from server.structured.workers import sandbox, send, serve


def compile_schema(schema_json: str, vocabulary: Any, shortest: bool = False) -> dict[str, Any]:
    """What vLLM's `OutlinesBackend.compile_grammar` does for the schema's regex (the one the
    engine decodes with), timed and measured; with `shortest`, also the fewest tokens a
    complete document takes (`min_tokens`, end-of-sequence included; None if none ends)."""
    import outlines_core

    started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        regex = schema_regex(schema_json)
    except ValueError as exc:
        return _refused(RefusalReason.UNSUPPORTED, f"outlines cannot build a regex: {exc}")
    try:
        budget = regex_budget(regex)  # also vLLM's check that Python's `re` can parse it
    except SchemaRefusedError as exc:
        return _refused(exc.reason, exc.message)
    regex_s = time.perf_counter() - started
    try:
        index = outlines_core.Index(regex, vocabulary)
    except MemoryError:
        return _refused(RefusalReason.MEMORY, "compiling the grammar ran out of memory")
    except ValueError as exc:
        return _refused(RefusalReason.UNSUPPORTED, f"outlines cannot index the regex: {exc}")
    total = time.perf_counter() - started
    extra = {}
    if shortest:  # numpy loads here only: it maps more than a tight memory limit allows
        from server.structured.completions import ShortestCompletions

        extra["min_tokens"] = ShortestCompletions.build(index).min_tokens
    return {
        **extra,
        "grammar_bytes": index_bytes(index),
        "ok": True,
        "compile_s": total,
        "compile_cpu_s": time.process_time() - cpu_started,
        "regex_s": regex_s,
        "regex_length": len(regex),
        "max_chars": budget.max_chars,
        "max_bytes": budget.max_bytes,
    }


def check_fallback(schema_json: str, engine: FallbackEngine) -> dict[str, Any]:
    """Whether the fallback `engine` compiles the schema (the grammar vLLM's backend would
    build, without the vocabulary: both build token masks lazily while decoding), and the
    longest document when the schema's regex can measure it."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    schema = fallback_schema(json.loads(schema_json), engine)
    try:
        if engine == "guidance":
            import llguidance

            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
            problem = llguidance.LLMatcher.validate_grammar(grammar)
        else:
            import xgrammar

            xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
            problem = ""
    except (ValueError, RuntimeError) as exc:
        problem = str(exc)
    if problem:
        return _refused(RefusalReason.UNSUPPORTED, f"{engine} cannot compile it: {problem}")
    try:
        budget = regex_budget(schema_regex(schema_json))
    except (ValueError, SchemaRefusedError):
        budget = DocumentBudget(None, None)
    return {
        "ok": True,
        "compile_s": time.perf_counter() - started,
        "compile_cpu_s": time.process_time() - cpu_started,
        "max_chars": budget.max_chars,
        "max_bytes": budget.max_bytes,
    }


def _refused(reason: RefusalReason, message: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason.value, "message": message}


_ENGINE_MODULES: dict[str, str] = {"guidance": "llguidance", "xgrammar": "xgrammar"}


def main(argv: list[str]) -> int:
    vocab_file, *engines = sandbox(argv)
    started = time.perf_counter()
    try:
        vocabulary = load_vocabulary(Path(vocab_file))
        for engine in engines:  # outside any check's CPU limit: xgrammar's import takes ~4 s
            importlib.import_module(_ENGINE_MODULES[engine])
    except (OSError, ValueError, KeyError, MemoryError, ImportError) as exc:
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        try:
            if request.get("fallback"):
                return check_fallback(request["schema"], request["fallback"])
            return compile_schema(request["schema"], vocabulary, bool(request.get("shortest")))
        except RecursionError:
            return _refused(RefusalReason.TOO_DEEP, "the grammar nests too deeply")

    return serve(handle, {"load_s": time.perf_counter() - started})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
