"""Compile cost of the NLU++ banking output schema and its variants, as the server checks it.

    .venv/bin/python loadtests/bench_nlupp_schema.py      # about a minute on an idle machine

The schema is built as `hotswap train` builds it from `training/recipes/nlupp_banking.yaml`
(its intents and slots read from `../shared/datasets/nlupp`), with the number of intents and
the slot-value pattern varied. Each one is bounded as the server bounds it (`prepare_schema`)
and compiled in the server's sandbox (`CompileGuard.check_sync`: regex, then
`outlines_core.Index` over the default base model's vocabulary), with limits generous enough
that every variant is measured; the server's own limits are printed beside the table.
Prints the table of `docs/training.md` ("The NLU++ schema").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.structured import CompileGuard, prepare_schema  # noqa: E402
from training.data import build_output_schema, prepare_data, slot_names  # noqa: E402
from training.recipe import load_recipe  # noqa: E402

RECIPE = ROOT / "training" / "recipes" / "nlupp_banking.yaml"
ASCII = r"[ !#-\[\]-~]"  # printable ASCII without " and \
WITH_CURRENCY = r"[ !#-\[\]-~£€]"
# (intents at most, slot-value pattern, the row's name)
VARIANTS: tuple[tuple[int, str, str], ...] = (
    (4, ASCII + "{0,24}", "intents ≤ 4 + slots, ASCII `{0,24}`"),
    (4, ASCII + "{0,32}", "intents ≤ 4 + slots, ASCII `{0,32}`"),
    (6, ASCII + "{0,32}", "intents ≤ 6 + slots, ASCII `{0,32}`"),
    (6, ASCII + "{0,40}", "intents ≤ 6 + slots, ASCII `{0,40}`"),
    (6, WITH_CURRENCY + "{0,32}", "intents ≤ 6 + slots, ASCII + `£€` `{0,32}`"),
)


def variant_schemas() -> list[tuple[str, dict[str, Any]]]:
    """Each variant's output schema, over the intents and slots of the recipe's data."""
    recipe = load_recipe(RECIPE)
    prepared = prepare_data(recipe, strict=False)
    labels = prepared.spec.labels or []
    examples = [example for split in prepared.splits.values() for example in split]
    slots = slot_names(recipe.task, examples)
    schemas = []
    for max_labels, pattern, name in VARIANTS:
        task = recipe.task.model_copy(
            update={
                "max_labels": max_labels,
                "slot_value_schema": {"type": "string", "pattern": pattern},
            }
        )
        is_recipe = (max_labels, pattern) == (
            recipe.task.max_labels,
            recipe.task.slot_value_schema.get("pattern"),
        )
        row = f"**{name} (the recipe)**" if is_recipe else name
        schemas.append((row, build_output_schema(task, labels, slots)))
    return schemas


def main() -> None:
    settings = Settings()
    schemas = variant_schemas()
    base = prepare_default_base_model(settings.home)
    print("| schema | regex chars | CPU s | index |")
    print("|---|---:|---:|---:|")
    with CompileGuard(base, timeout_s=60.0, wall_timeout_s=600.0, max_grammar_mb=1024) as guard:
        guard.start()
        for name, schema in schemas:
            verdict = guard.check_sync(prepare_schema(schema).bounded)
            if not verdict.ok:
                print(f"| {name} | - | - | refused: {verdict.message} |")
                continue
            megabytes = (verdict.grammar_bytes or 0) / (1 << 20)
            print(
                f"| {name} | {verdict.regex_length:,} | {verdict.compile_cpu_s:.2f} "
                f"| {megabytes:.0f} MB |"
            )
    print(
        f"\nThe server refuses over {settings.schema_compile_timeout_s} CPU s or "
        f"{settings.schema_max_grammar_mb} MB of index (HOTSWAP_SCHEMA_COMPILE_TIMEOUT_S, "
        "HOTSWAP_SCHEMA_MAX_GRAMMAR_MB)."
    )


if __name__ == "__main__":
    main()
