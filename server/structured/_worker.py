"""Compile worker: a child process that compiles schemas exactly as vLLM's outlines backend does.

Started by `CompileGuard` as `python -m server.structured._worker MEMORY_MB PARENT_PID VOCAB_FILE`
(the protocol of `server.structured.workers`): for each request
`{"id": N, "schema": "<schema as json.dumps wrote it>"}` it answers `{"id": N, "ok": ...}`.
Its address space is capped with RLIMIT_AS before anything is loaded, and it dies with its
parent (PR_SET_PDEATHSIG), so a runaway compilation can only kill this process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from adapters.json_grammar import schema_regex
from server.structured.budget import regex_budget
from server.structured.engine_grammar_cache import index_bytes
from server.structured.errors import RefusalReason, SchemaRefusedError
from server.structured.vocabulary import load_vocabulary
from server.structured.workers import sandbox, send, serve


def compile_schema(schema_json: str, vocabulary: Any) -> dict[str, Any]:
    """What vLLM's `OutlinesBackend.compile_grammar` does for the schema's regex (the one the
    engine decodes with), timed and measured."""
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
    return {
        "grammar_bytes": index_bytes(index),
        "ok": True,
        "compile_s": total,
        "compile_cpu_s": time.process_time() - cpu_started,
        "regex_s": regex_s,
        "regex_length": len(regex),
        "max_chars": budget.max_chars,
        "max_bytes": budget.max_bytes,
    }


def _refused(reason: RefusalReason, message: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason.value, "message": message}


def main(argv: list[str]) -> int:
    vocab_file = Path(sandbox(argv)[0])
    started = time.perf_counter()
    try:
        vocabulary = load_vocabulary(vocab_file)
    except (OSError, ValueError, KeyError, MemoryError) as exc:
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        try:
            return compile_schema(request["schema"], vocabulary)
        except RecursionError:
            return _refused(RefusalReason.TOO_DEEP, "the grammar nests too deeply")

    return serve(handle, {"load_s": time.perf_counter() - started})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
