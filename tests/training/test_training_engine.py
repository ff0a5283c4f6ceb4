"""The whole path on the demo set: training measurably beats the base model zero-shot when
both are scored through the serving engine (vLLM, label probabilities read as served, same
framing), and the temperature fitted on the validation split lowers the calibration error."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.base_spec import spec_from_hf_config
from adapters.fingerprint import model_fingerprint
from adapters.label_trie import DEFAULT_MAX_EXPANSIONS
from adapters.manifest import MANIFEST_FILE, AdapterManifest, TaskSpec
from adapters.registry import AdapterRegistry
from tests.support.adapters import make_random_lora
from training.calibration import TEMPERATURE_BOUNDS
from training.data import Example, PreparedData, prepare_data
from training.evaluate import Engine, evaluate, schema_max_tokens
from training.metrics import score
from training.pipeline import finish_run
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
    result = finish_run(
        recipe, prepared, trained, tmp_path, base_dir=base_model_path, engine=engine
    )
    report = result.report
    tuned, base = report.adapter_run.scores, report.base_run.scores if report.base_run else None
    assert base is not None
    assert tuned.validity == 1.0 and base.validity == 1.0
    assert tuned.accuracy >= base.accuracy + 0.2, (tuned.accuracy, base.accuracy)
    assert tuned.accuracy >= 0.7 and report.passed, report.gate.reasons
    for name in ("report.md", "report.json", "confusion.csv", "confusion.png"):
        assert (trained.adapter_dir / name).is_file()

    # Label probabilities: confidences are probabilities, and the temperature fitted on the
    # validation split lowers the test split's calibration error.
    calibration = report.calibration
    assert calibration is not None
    print(f"\ncalibration: {calibration.model_dump_json()}")
    print(f"adapter run: {report.adapter_run.model_dump_json(exclude={'scores', 'outputs'})}")
    for run in (report.adapter_run, report.base_run):
        assert run is not None and run.confidences is not None and run.ece is not None
        assert all(0.0 < p <= 1.0 for p in run.confidences)
    assert calibration.validation_examples == len(prepared.splits["validation"])
    assert calibration.test_ece_calibrated < calibration.test_ece_uncalibrated, calibration
    markdown = (trained.adapter_dir / "report.md").read_text()
    for ece in (calibration.val_ece_uncalibrated, calibration.test_ece_calibrated):
        assert f"{ece:.3f}" in markdown

    # Scoring answers the label greedy constrained decoding answers, nearly always.
    spec = prepared.spec
    texts = [ex.text for ex in prepared.splits["test"]]
    started = time.monotonic()
    greedy = engine.generate(
        spec, texts, adapter_dir=trained.adapter_dir, max_tokens=schema_max_tokens(spec)
    )
    greedy_s = time.monotonic() - started
    greedy_scores = score(
        greedy,
        [ex.target for ex in prepared.splits["test"]],
        schema=spec.output_schema,
        labels=spec.labels or [],
        label_field=spec.label_field or "",
        single_label=True,
    )
    print(
        f"greedy accuracy {greedy_scores.accuracy:.3f} in {greedy_s:.1f} s; scored "
        f"{tuned.accuracy:.3f} (temperature 1: {calibration.test_accuracy_uncalibrated:.3f})"
    )
    pairs = zip(greedy, report.adapter_run.outputs, strict=True)
    agree = sum(a == b for a, b in pairs)
    assert agree >= 0.9 * len(greedy), agree

    # A second evaluation gated against the first reads the manifest's temperature.
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
    assert again.calibration is None
    assert again.adapter_run.temperature == calibration.temperature
    # vLLM is not bitwise reproducible across runs on CPU (the second run hits the prefix cache
    # and batches differently), so a near-tie may flip: CI saw 1 of 56 differ.
    pairs = zip(again.adapter_run.outputs, report.adapter_run.outputs, strict=True)
    same = sum(a == b for a, b in pairs)
    assert same >= 0.95 * len(report.adapter_run.outputs), same

    fingerprint = model_fingerprint(base_model_path)
    spec_of_base = spec_from_hf_config(base_model_path, fingerprint=fingerprint, max_lora_rank=16)
    registry = AdapterRegistry(tmp_path / "home", spec_of_base)
    try:
        stored = registry.register(result.archive).manifest
        assert stored.training is not None
        metrics = stored.training.metrics
        assert metrics["test_accuracy"] == tuned.accuracy
        assert metrics["calibration_temperature"] == calibration.temperature
        assert metrics["test_ece_calibrated"] == calibration.test_ece_calibrated
        assert metrics["val_ece_uncalibrated"] == calibration.val_ece_uncalibrated
        written = stored.task.calibration
        assert written is not None and written.temperature == calibration.temperature
        assert written.abstain_below == recipe.eval.abstain_below
        assert written.predicted_distribution == calibration.predicted_distribution
        assert stored.task.drift_reference == calibration.predicted_distribution
    finally:
        registry.close()


SET_LABELS = ["card", "transfer", "refund", "fees", "pin"]
SET_SCHEMA = {
    "type": "object",
    "properties": {
        "intents": {
            "type": "array",
            "items": {"type": "string", "enum": SET_LABELS},
            "maxItems": 3,
        },
        "urgent": {"type": "boolean"},
    },
    "required": ["intents", "urgent"],
    "additionalProperties": False,
}
"""A property after the array: SmolLM2 writes `]}` as one token, so `{"intents":[]}` alone would
not encode as its pieces (`LabelSetGrammar.build`) and the labels would not be scored."""
SET_TEXTS = [
    ("My card has not arrived and I was charged a fee.", ["card", "fees"]),
    ("How do I change my PIN?", ["pin"]),
    ("I want my money back for this transfer.", ["refund", "transfer"]),
    ("Hello there.", []),
    ("Why was my transfer declined?", ["transfer"]),
    ("The card machine kept my card.", ["card"]),
]


def test_multi_label_probabilities_are_read_and_calibrated_on_the_engine(
    engine: Engine, base_model_path: Path, tmp_path: Path
) -> None:
    """A multi-label adapter (random LoRA weights) on the real engine: evaluation generates
    its answers, reads every validation and test text's label-set probabilities as the server
    does, fits their temperature and measures them label by label."""
    folder = make_random_lora(
        base_model_path, tmp_path / "lora", seed=4, rank=8, target_modules=["q_proj", "v_proj"]
    )
    task = TaskSpec(
        system_message="List the intents of the banking request.",
        output_schema=SET_SCHEMA,
        labels=SET_LABELS,
        label_field="intents",
    )
    (folder / MANIFEST_FILE).write_text(
        AdapterManifest(name="sets", task=task).model_dump_json(exclude_none=True)
    )
    examples = [Example(text, {"intents": labels, "urgent": False}) for text, labels in SET_TEXTS]
    report = evaluate(
        folder,
        examples[3:],
        base_dir=base_model_path,
        engine=engine,
        validation=examples[:3],
        compare_base=False,
        write=False,
        label_set_examples=2,
    )
    assert report.adapter_run.scores.validity == 1.0
    c = report.set_calibration
    assert c is not None and report.calibration is None
    assert c.validation_examples == 3 and c.test_examples == 2
    # At least the root of the first item for each text, at most the search's cap.
    assert 5 <= c.forward_passes <= 5 * DEFAULT_MAX_EXPANSIONS
    assert TEMPERATURE_BOUNDS[0] <= c.temperature <= TEMPERATURE_BOUNDS[1]
    for ece in (c.val_ece_uncalibrated, c.val_ece_calibrated, c.test_ece_uncalibrated):
        assert 0.0 <= ece <= 1.0
    assert 0.0 <= c.test_micro_f1_thresholded <= 1.0
