"""Bound and compile the whole corpus through the compile guard; print one line per schema.

    .venv/bin/python tests/structured/compile_corpus.py [--timeout 5] [--memory 2048] [NAME ...]

Uses the default base model's tokenizer (prepared under ~/.cache/hotswap). Takes minutes:
the test suite compiles a sample; this is the full measurement behind the coverage numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

from server.base_model import prepare_default_base_model
from server.structured import CompileGuard, SchemaLimits, SchemaRefusedError, prepare_schema

CORPUS = Path(__file__).parent / "corpus"


def load_corpus() -> list[dict]:
    entries: list[dict] = []
    for path in sorted(CORPUS.glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            entries.append({**item, "family": path.stem})
    return entries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--memory", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    model = prepare_default_base_model(Path.home() / ".cache" / "hotswap")
    limits = SchemaLimits()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    with CompileGuard(
        model, timeout_s=args.timeout, memory_limit_mb=args.memory, workers=args.workers
    ) as guard:
        guard.start()
        for item in load_corpus():
            if args.names and item["name"] not in args.names:
                continue
            started = time.perf_counter()
            try:
                bounded = prepare_schema(item["schema"], limits).bounded
            except SchemaRefusedError as exc:
                outcome, detail = "refused-bound", f"{exc.reason}: {exc.message[:80]}"
            else:
                verdict = guard.check_sync(bounded)
                if verdict.ok:
                    assert verdict.budget is not None
                    outcome = "compiled"
                    detail = (
                        f"compile={verdict.compile_s:.2f}s cpu={verdict.compile_cpu_s:.2f}s "
                        f"chars<={verdict.budget.max_chars} tokens<={verdict.budget.max_tokens}"
                    )
                else:
                    outcome = "refused-guard"
                    detail = f"{verdict.reason}: {verdict.message[:80]}"
            wall = time.perf_counter() - started
            outcomes[(item["expect"], outcome)] += 1
            print(
                f"{item['family']:12s} {item['name']:36s} {item['expect']:6s} {outcome:14s} "
                f"{wall:6.2f}s {detail}",
                flush=True,
            )
    print(json.dumps({f"{k[0]}->{k[1]}": v for k, v in sorted(outcomes.items())}, indent=1))


if __name__ == "__main__":
    main()
