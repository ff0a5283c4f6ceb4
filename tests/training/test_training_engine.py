"""The whole path on the demo set: training measurably beats the base model zero-shot when
both are scored through the serving engine (vLLM, constrained JSON, same framing)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.base_spec import spec_from_hf_config
from adapters.fingerprint import model_fingerprint
from adapters.registry import AdapterRegistry
from training.data import PreparedData, prepare_data
from training.evaluate import Engine, evaluate, headline_metrics
from training.package import package, update_manifest
from training.recipe import REPO_ROOT, Recipe, load_recipe
from training.train import TrainResult, train

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe(REPO_ROOT / "training/recipes/demo.yaml")


@pytest.fixture(scope="module")
def prepared(recipe: Recipe) -> PreparedData:
    return prepare_data(recipe)


@pytest.fixture(scope="module")
def trained(
    recipe: Recipe,
    prepared: PreparedData,
    base_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainResult:
    out = tmp_path_factory.mktemp("demo-run")
    return train(recipe, out, data=prepared, base_dir=base_model_path)


@pytest.fixture(scope="module")
def engine(trained: TrainResult, base_model_path: Path) -> Iterator[Engine]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    started = Engine(base_model_path)
    try:
        yield started
    finally:
        started.close()


def test_training_beats_the_base_model(
    recipe: Recipe,
    prepared: PreparedData,
    trained: TrainResult,
    engine: Engine,
    base_model_path: Path,
    tmp_path: Path,
) -> None:
    assert trained.steps > 0 and trained.best_eval_loss is not None
    report = evaluate(
        trained.adapter_dir,
        prepared.splits["test"],
        base_dir=base_model_path,
        gate=recipe.eval.gate,
        engine=engine,
        max_tokens=recipe.eval.max_tokens,
    )
    tuned, base = report.adapter_run.scores, report.base_run.scores if report.base_run else None
    assert base is not None
    assert tuned.validity == 1.0 and base.validity == 1.0
    assert tuned.accuracy >= base.accuracy + 0.2, (tuned.accuracy, base.accuracy)
    assert tuned.accuracy >= 0.7 and report.passed, report.gate.reasons
    for name in ("report.md", "report.json", "confusion.csv", "confusion.png"):
        assert (trained.adapter_dir / name).is_file()

    # A second evaluation gated against the first: same adapter, no regression.
    again = evaluate(
        trained.adapter_dir,
        prepared.splits["test"],
        base_dir=base_model_path,
        gate=recipe.eval.gate,
        previous_report=trained.adapter_dir / "report.json",
        compare_base=False,
        engine=engine,
        write=False,
    )
    assert again.passed, again.gate.reasons
    # vLLM is not bitwise reproducible across runs on CPU (the second run hits the prefix cache
    # and batches differently), so a near-tie may flip: CI saw 1 of 56 differ.
    pairs = zip(again.adapter_run.outputs, report.adapter_run.outputs, strict=True)
    same = sum(a == b for a, b in pairs)
    assert same >= 0.95 * len(report.adapter_run.outputs), same

    update_manifest(trained.adapter_dir, metrics=headline_metrics(report))
    fingerprint = model_fingerprint(base_model_path)
    archive = package(trained.adapter_dir, tmp_path / "demo.tar.gz", base_fingerprint=fingerprint)
    spec = spec_from_hf_config(base_model_path, fingerprint=fingerprint, max_lora_rank=16)
    registry = AdapterRegistry(tmp_path / "home", spec)
    try:
        stored = registry.register(archive).manifest
        assert stored.training is not None
        assert stored.training.metrics["test_accuracy"] == tuned.accuracy
    finally:
        registry.close()
