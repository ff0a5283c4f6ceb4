"""Training speed, side by side: the seconds per step of a recipe's training with its knobs
varied (caching the frozen lower layers, sharing the prompt's common tokens, the loss on the
label-choosing tokens only, LoRA dropout), in interleaved rounds.

    .venv/bin/python loadtests/bench_training_step.py                  # banking77.yaml, 3 rounds
    .venv/bin/python loadtests/bench_training_step.py --cases 2 4      # two cases only
    .venv/bin/python loadtests/bench_training_step.py --recipe training/recipes/banking77_all.yaml

Every case is a real `training.train.train` run of the recipe (the project's trainer, the real
base model and data) cut to `--steps` steps, in a scratch folder. Its step time excludes the
one-off work before the first step (building the frozen layers' cache, reported apart). The
cases run in a rotated order in each round (this machine is noisy: compare within a round);
the table gives each case's median and min-max over the rounds and the ratio to the first
case in the same round (median and spread). The steps are the first of the run, the longest
batch among them (the length-grouped sampler puts it first): compare the cases, not the
absolute times with those of a whole run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data import prepare_data  # noqa: E402
from training.recipe import load_recipe  # noqa: E402
from training.train import TrainResult, train  # noqa: E402

RECIPE = ROOT / "training" / "recipes" / "banking77.yaml"
WHOLE = ["train.label_choice_loss=false"]
OFF = [*WHOLE, "train.cache_frozen_layers=false", "train.share_prompt=false"]
CACHED = [*WHOLE, "train.cache_frozen_layers=true", "train.share_prompt=false"]
SHARED = [*WHOLE, "train.cache_frozen_layers=true", "train.share_prompt=true"]
CHOICES = [*SHARED[1:], "train.label_choice_loss=true"]
CASES: dict[str, list[str]] = {
    "every layer, every token, dropout 0.05": [*OFF, "lora.dropout=0.05"],
    "cached frozen layers, no dropout": [*CACHED, "lora.dropout=0.0"],
    "cached layers, shared prompt, no dropout": [*SHARED, "lora.dropout=0.0"],
    "cached layers, shared prompt, dropout 0.05": [*SHARED, "lora.dropout=0.05"],
    "cached, shared, label-choice loss, no dropout": [*CHOICES, "lora.dropout=0.0"],
    "cached, shared, label-choice loss, dropout 0.05": [*CHOICES, "lora.dropout=0.05"],
}


def run_case(recipe_path: Path, overrides: list[str], steps: int) -> TrainResult:
    recipe = load_recipe(recipe_path, [*overrides, f"train.max_steps={steps}"])
    with tempfile.TemporaryDirectory(prefix="bench-training-step-") as out:
        return train(recipe, Path(out))


def step_s(result: TrainResult) -> float:
    return (result.wall_s - result.cache_s) / result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--steps", type=int, default=20, help="training steps per case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cases",
        type=int,
        nargs="+",
        default=list(range(len(CASES))),
        help="which cases to run, by their number from 0 in CASES (the first is the baseline)",
    )
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, [])
    train_rows = len(prepare_data(recipe).splits["train"])
    names = [list(CASES)[i] for i in args.cases]
    results: dict[str, list[TrainResult]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            result = run_case(args.recipe, CASES[name], args.steps)
            results[name].append(result)
            print(
                f"round {round_no + 1} {name}: {step_s(result):.3f} s/step, "
                f"cache {result.cache_s:.1f} s",
                flush=True,
            )
        first = step_s(results[names[0]][-1])
        for name in names:
            ratios[name].append(step_s(results[name][-1]) / first)

    print(
        f"\n{args.recipe.name}: {train_rows} training texts, batch {recipe.train.batch_size}; "
        f"{args.steps} steps per case, {args.rounds} rounds\n"
    )
    print("| case | s / step, median [min-max] | x first case, median [min-max] | one-off s |")
    print("|---|---:|---:|---:|")
    for name in names:
        times = [step_s(r) for r in results[name]]
        one_off = statistics.median(r.cache_s for r in results[name])
        print(
            f"| {name} | {statistics.median(times):.3f} [{min(times):.3f}-{max(times):.3f}] "
            f"| {statistics.median(ratios[name]):.2f} "
            f"[{min(ratios[name]):.2f}-{max(ratios[name]):.2f}] | {one_off:.0f} |"
        )


if __name__ == "__main__":
    main()
