"""BANKING77: accuracy and macro-F1 of base + LoRA against the wall time of training, per
training-set size, beside the base model zero-shot.

    .venv/bin/python loadtests/bench_training.py --sizes 5 10 30
    .venv/bin/python loadtests/bench_training.py --sizes 10 --test-per-label 0   # full test set

Each size is one `hotswap train` run of `training/recipes/banking77.yaml` (the project's own
path: validation report, LoRA training, evaluation through the serving engine with the same
constrained decoding, packaging) with `data.split.train_per_label=N`, in
`OUT/b77-<N>shot-<key>`, where the key is a digest of every knob of the run (the recipe with
all its overrides applied: size, test subset, base comparison, every `--set`), also written
to `knobs.json` there. A run folder that already holds `train_result.json` and
`adapter/report.json` is reused, not trained again, so an interrupted sweep continues where
it stopped; a run with any other knob gets its own folder, so it is never reprinted as this
one. Evaluation uses a fixed stratified subset of the official test set (`--test-per-label`
per intent; 0: all 3,080). Extra recipe overrides go through `--set`, as for `hotswap train`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.evaluate import REPORT_JSON, EvalReport  # noqa: E402
from training.recipe import Recipe, load_recipe  # noqa: E402
from training.train import TrainResult  # noqa: E402

RECIPE = ROOT / "training" / "recipes" / "banking77.yaml"
DEFAULT_OUT = Path.home() / ".cache" / "hotswap" / "bench-training"


def run_key(recipe: Recipe) -> str:
    """A digest of every knob of the run: the recipe with its overrides applied."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_size(
    root: Path, size: int, test_per_label: int, compare_base: bool, extra: list[str]
) -> tuple[Path, TrainResult, EvalReport]:
    """Train and evaluate one size (or reuse the finished run with the same knobs)."""
    overrides = [
        f"data.split.train_per_label={size}",
        f"data.split.test_per_label={test_per_label or 'null'}",
        f"eval.compare_base={str(compare_base).lower()}",
        *extra,
    ]
    recipe = load_recipe(RECIPE, overrides)
    out = root / f"b77-{size}shot-{run_key(recipe)}"
    report_file = out / "adapter" / REPORT_JSON
    result_file = out / "train_result.json"
    if not (report_file.is_file() and result_file.is_file()):
        from training.pipeline import run_recipe

        out.mkdir(parents=True, exist_ok=True)
        knobs = {"overrides": overrides, "recipe": recipe.model_dump(mode="json")}
        (out / "knobs.json").write_text(json.dumps(knobs, indent=1) + "\n")
        run_recipe(recipe, out)
    return (
        out,
        TrainResult.model_validate_json(result_file.read_text()),
        EvalReport.model_validate_json(report_file.read_text()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 30])
    parser.add_argument("--test-per-label", type=int, default=5, help="0: the full test set")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args()
    rows = [
        "| model | train examples | steps | train wall | s / step | tokens / s "
        "| test n | validity | accuracy | macro-F1 | test ECE (T=1 → fitted T) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_row = None
    folders = []
    for i, size in enumerate(args.sizes):
        out, trained, report = run_size(args.out, size, args.test_per_label, i == 0, args.extra)
        folders.append(out)
        scores, c = report.adapter_run.scores, report.calibration
        ece = (
            f"{c.test_ece_uncalibrated:.3f} → {c.test_ece_calibrated:.3f} (T {c.temperature:.2f})"
            if c is not None
            else "-"
        )
        rows.append(
            f"| LoRA {size}-shot | {trained.train_examples} | {trained.steps} "
            f"| {trained.wall_s / 60:.1f} min | {trained.s_per_step:.1f} "
            f"| {trained.tokens_per_s:.0f} | {scores.examples} | {scores.validity:.1%} "
            f"| {scores.accuracy:.1%} | {scores.macro_f1:.3f} | {ece} |"
        )
        if report.base_run is not None and base_row is None:
            base = report.base_run.scores
            base_row = (
                f"| base zero-shot | 0 | 0 | - | - | - | {base.examples} | {base.validity:.1%} "
                f"| {base.accuracy:.1%} | {base.macro_f1:.3f} | - |"
            )
    if base_row:
        rows.insert(2, base_row)
    print("\n".join(rows))
    print(f"\nruns: {', '.join(map(str, folders))}; overrides {args.extra or 'none'}")


if __name__ == "__main__":
    main()
