"""The whole path for one recipe: validate data, train, evaluate, stamp the manifest, package.

    hotswap train training/recipes/demo.yaml runs/demo

`hotswap train` (server/cli.py) calls `run_recipe`; evaluation starts a vLLM engine (a
spawned process), so call it from under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from adapters.fingerprint import model_fingerprint
from adapters.label_trie import classification_field
from adapters.manifest import Calibration
from training.data import PreparedData, prepare_data
from training.evaluate import Engine, EvalReport, FittedTemperature, evaluate, headline_metrics
from training.package import package, update_manifest
from training.recipe import Recipe
from training.train import TrainResult, base_model_dir, train

logger = logging.getLogger(__name__)


class PipelineResult(BaseModel):
    """What `run_recipe` produced: the training run, the evaluation and the archive."""

    train: TrainResult
    report: EvalReport
    archive: Path

    @property
    def passed(self) -> bool:
        return self.report.passed


def run_recipe(
    recipe: Recipe,
    out_dir: Path,
    *,
    resume: bool = False,
    previous_report: Path | None = None,
    base_dir: Path | None = None,
) -> PipelineResult:
    """Train, evaluate (beside the base model, through the gate) and package `recipe`.

    The archive `out_dir/<name>.tar.gz` is written even when the gate fails, so it can be
    inspected; callers must not push it then (`result.passed`).
    """
    base = base_dir or base_model_dir(recipe)
    prepared = prepare_data(recipe)
    logger.info("data:\n%s", prepared.report.format())
    trained = train(recipe, out_dir, resume=resume, data=prepared, base_dir=base)
    logger.info(
        "trained %d steps in %.0f s (%.2f s/step, %.0f tokens/s)",
        trained.steps,
        trained.wall_s,
        trained.s_per_step,
        trained.tokens_per_s,
    )
    return finish_run(
        recipe, prepared, trained, out_dir, base_dir=base, previous_report=previous_report
    )


def finish_run(
    recipe: Recipe,
    prepared: PreparedData,
    trained: TrainResult,
    out_dir: Path,
    *,
    base_dir: Path,
    previous_report: Path | None = None,
    engine: Engine | None = None,
) -> PipelineResult:
    """Evaluate the trained adapter (a classifier's label probabilities calibrated on the
    validation split), stamp the metrics and calibration into its manifest, package it.
    `engine` may be shared (tests); otherwise evaluation starts its own."""
    test = prepared.splits["test"][: recipe.eval.max_examples]
    validation = prepared.splits.get("validation") or []
    spec = prepared.spec
    classifier = classification_field(spec.output_schema, spec.labels) is not None
    if classifier and not validation:
        logger.warning(
            "no validation split: label probabilities are not calibrated (temperature 1, "
            "no calibration figures, the labels' distribution as drift reference)"
        )
    report = evaluate(
        trained.adapter_dir,
        test,
        base_dir=base_dir,
        gate=recipe.eval.gate,
        previous_report=previous_report,
        compare_base=recipe.eval.compare_base,
        max_tokens=recipe.eval.max_tokens,
        engine=engine,
        validation=validation,
        label_set_examples=recipe.eval.label_set_examples,
    )
    metrics = {
        **headline_metrics(report),
        "train_wall_s": trained.wall_s,
        "train_examples": float(trained.train_examples),
    }
    # No validation loss measured: no figure. `eval_loss` is the shipped weights' own.
    for key, loss in (("best_eval_loss", trained.best_eval_loss), ("eval_loss", trained.eval_loss)):
        if loss is not None:
            metrics[key] = loss
    # Without a fit, only the recipe's abstention threshold is written (temperature 1).
    calibration = (
        Calibration(abstain_below=recipe.eval.abstain_below)
        if classifier and recipe.eval.abstain_below is not None
        else None
    )
    fitted: FittedTemperature | None = report.calibration or report.set_calibration
    if fitted is not None:
        logger.info(
            "calibration: temperature %.3f; ECE validation %.3f -> %.3f, test %.3f -> %.3f",
            fitted.temperature,
            fitted.val_ece_uncalibrated,
            fitted.val_ece_calibrated,
            fitted.test_ece_uncalibrated,
            fitted.test_ece_calibrated,
        )
    if (single := report.calibration) is not None:
        calibration = Calibration(
            temperature=single.temperature,
            abstain_below=recipe.eval.abstain_below,
            predicted_distribution=single.predicted_distribution,
            mean_confidence=single.mean_confidence,
        )
    elif report.set_calibration is not None:  # multi-label: the temperature only
        calibration = Calibration(temperature=report.set_calibration.temperature)
    update_manifest(trained.adapter_dir, metrics=metrics, calibration=calibration)
    archive = package(
        trained.adapter_dir,
        out_dir / f"{recipe.name}.tar.gz",
        base_fingerprint=model_fingerprint(base_dir),
    )
    return PipelineResult(train=trained, report=report, archive=archive)
