"""Memory of compiled grammars held as vLLM holds them: an LRU of 128, whatever their size.

    .venv/bin/python loadtests/bench_grammar_memory.py              # every admitted corpus schema
    .venv/bin/python loadtests/bench_grammar_memory.py --count 40   # the first 40 (shuffled)

The corpus schemas (`tests/structured/corpus`) that the server admits, in a fixed shuffled
order: each is bounded as the server bounds it and checked by the compile guard with the
server's default limits (refused ones are skipped, as the server would answer 422). Each
admitted schema is then compiled in this process as vLLM's outlines backend compiles it
(`schema_regex`, then `outlines_core.Index` over the default model's vocabulary) and kept in an
LRU of 128 entries, as vLLM's `get_outlines_cache()` keeps them without the hotswap plugin.

Prints, per schema, the index's serialized size (`index_bytes`: what `HOTSWAP_GRAMMAR_CACHE_MB`
counts) and the resident memory (RSS) the process gained while compiling and keeping it (0 where
the allocator reused freed memory); then the RSS at the end over the serialized size of the
indexes kept: the resident factor. Past 128 schemas the LRU evicts, and memory freed then is not
always returned to the system, so the factor grows.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.json_grammar import schema_regex  # noqa: E402
from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.structured import CompileGuard, SchemaRefusedError, prepare_schema  # noqa: E402
from server.structured.engine_grammar_cache import index_bytes  # noqa: E402
from server.structured.vocabulary import load_vocabulary, vocabulary_file  # noqa: E402
from tests.structured.conftest import CORPUS  # noqa: E402

LRU_ENTRIES = 128  # vLLM's get_outlines_cache()
MIB = 1 << 20


def admitted_schemas(
    guard: CompileGuard, settings: Settings, count: int | None, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """(name, bounded schema) of the corpus schemas the server would admit, shuffled."""
    entries = list(CORPUS)
    random.Random(seed).shuffle(entries)
    admitted: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        if count is not None and len(admitted) >= count:
            break
        try:
            bounded = prepare_schema(entry["schema"], settings.schema_limits).bounded
        except SchemaRefusedError:
            continue
        if guard.check_sync(bounded).ok:
            admitted.append((entry["name"], bounded))
    return admitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="admitted schemas to compile")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = Settings()
    base = prepare_default_base_model(settings.home)
    with CompileGuard(
        base,
        timeout_s=settings.schema_compile_timeout_s,
        memory_limit_mb=settings.schema_compile_memory_mb,
        max_grammar_mb=settings.schema_max_grammar_mb,
        vocab_cache_dir=settings.schema_vocab_cache_dir,
    ) as guard:
        guard.start()
        schemas = admitted_schemas(guard, settings, args.count, args.seed)
        vocabulary = load_vocabulary(vocabulary_file(base, guard.vocab_cache_dir))
    import outlines_core

    process = psutil.Process()
    cache: dict[str, tuple[Any, int]] = {}  # insertion order is use order: no repeats
    start_rss = process.memory_info().rss
    started = time.perf_counter()
    print(f"RSS before compiling: {start_rss / MIB:,.0f} MiB; {len(schemas)} admitted schemas")
    print("| # | schema | serialized | RSS gained | RSS after |")
    print("|---:|---|---:|---:|---:|")
    for number, (name, bounded) in enumerate(schemas, 1):
        before = process.memory_info().rss
        index = outlines_core.Index(schema_regex(json.dumps(bounded)), vocabulary)
        if len(cache) == LRU_ENTRIES:
            del cache[next(iter(cache))]
        size = index_bytes(index)
        cache[name] = (index, size)
        after = process.memory_info().rss
        print(
            f"| {number} | {name} | {size / MIB:,.1f} MiB | {(after - before) / MIB:,.1f} MiB "
            f"| {after / MIB:,.0f} MiB |"
        )
    gained = process.memory_info().rss - start_rss
    kept = sum(size for _, size in cache.values())
    print(
        f"\nRSS gained {gained / MIB:,.0f} MiB holding {len(cache)} indexes of {kept / MIB:,.0f} "
        f"MiB serialized (LRU of {LRU_ENTRIES}): resident factor {gained / max(kept, 1):.2f}; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
