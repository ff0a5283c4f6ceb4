"""Metrics recorded by the domain layer, read back from the Prometheus registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from adapters.manifest import Calibration, TaskSpec
from server.catalog import ServedModel
from server.errors import ModelNotFound
from server.generation import GenerationRequest
from server.label_scores import LabelVerdict
from server.metrics.labels import LabelTracker, labels_of
from server.metrics.stats import adapter_stats
from tests.support.fakes import service

TASK = TaskSpec(
    output_schema={"type": "object", "properties": {"intent": {"type": "string"}}},
    labels=["hello", "bye"],
    label_field="intent",
    reference_distribution={"hello": 0.75, "bye": 0.25},
)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_labels_of_reads_the_label_field() -> None:
    assert labels_of(TASK, {"intent": "hello"}) == ["hello"]
    assert labels_of(TASK, {"intent": ["hello", "bye"]}) == ["hello", "bye"]
    assert labels_of(TASK, {"intent": 3}) == ["__other__"]
    assert labels_of(TASK, {"other": "x"}) == []
    assert labels_of(TASK, "not an object") == []


def test_tracker_counts_labels_and_fills_the_drift_window() -> None:
    tracker = LabelTracker(window_size=10)
    before = sample("hotswap_labels_total", adapter="t1", label="__other__")
    for label in ("hello", "hello", "bye", "surprise"):
        tracker.observe("t1", TASK, {"intent": label})
    assert sample("hotswap_labels_total", adapter="t1", label="hello") >= 2
    assert sample("hotswap_labels_total", adapter="t1", label="__other__") == before + 1
    status = tracker.status("t1")
    assert status is not None and status.count == 4 and status.window_fill == 0.4
    families = {f.name: f for f in tracker.collect()}
    assert families["hotswap_drift_window_fill"].samples[0].value == 0.4


def test_a_new_reference_distribution_restarts_the_window() -> None:
    tracker = LabelTracker(window_size=10)
    tracker.observe("t2", TASK, {"intent": "hello"})
    changed = TASK.model_copy(update={"reference_distribution": {"hello": 0.5, "bye": 0.5}})
    tracker.observe("t2", changed, {"intent": "bye"})
    status = tracker.status("t2")
    assert status is not None and status.count == 1


def test_the_adapters_own_predictions_are_the_drift_reference_when_recorded() -> None:
    predicted = {"hello": 0.5, "bye": 0.5}
    task = TASK.model_copy(update={"calibration": Calibration(predicted_distribution=predicted)})
    assert task.drift_reference == predicted and TASK.drift_reference == TASK.reference_distribution
    own, labels = LabelTracker(window_size=4), LabelTracker(window_size=4)
    for label in ("hello", "bye", "hello", "bye"):
        own.observe("t4", task, {"intent": label})
        labels.observe("t4", TASK, {"intent": label})
    near, far = own.status("t4"), labels.status("t4")
    assert near is not None and far is not None
    # 50/50 predictions sit on the predicted reference (its small __other__ mass aside)
    assert near.js_distance < 0.03 < 0.15 < far.js_distance


def test_verdicts_feed_the_confidence_histogram_abstain_counts_and_drift_gauge() -> None:
    task = TASK.model_copy(update={"calibration": Calibration(mean_confidence=0.9)})
    model = ServedModel("t5", 2, None, task)
    tracker = LabelTracker(window_size=10)
    tracker.observe_verdict(model, LabelVerdict(0.6, (("hello", 0.6),), abstained=False))
    tracker.observe_verdict(model, LabelVerdict(0.4, (("bye", 0.4),), abstained=True))
    assert sample("hotswap_label_confidence_count", adapter="t5", version="2") == 2
    assert sample("hotswap_label_confidence_sum", adapter="t5", version="2") == pytest.approx(1.0)
    assert (
        sample("hotswap_label_verdicts_total", adapter="t5", version="2", verdict="abstained") == 1
    )
    families = {f.name: f for f in tracker.collect()}
    (mean,) = [
        s for s in families["hotswap_label_confidence_mean"].samples if s.labels["adapter"] == "t5"
    ]
    (drift,) = [
        s for s in families["hotswap_label_confidence_drift"].samples if s.labels["adapter"] == "t5"
    ]
    assert mean.value == pytest.approx(0.5) and drift.value == pytest.approx(0.4)


def test_no_reference_means_counts_without_drift() -> None:
    tracker = LabelTracker()
    tracker.observe(
        "t3", TASK.model_copy(update={"reference_distribution": None}), {"intent": "bye"}
    )
    assert sample("hotswap_labels_total", adapter="t3", label="bye") == 1
    assert tracker.status("t3") is None


async def test_unknown_models_are_counted_under_one_label() -> None:
    gen, _ = service()
    before = sample(
        "hotswap_requests_total",
        adapter="unknown",
        version="",
        protocol="http",
        route="generate",
        status="model_not_found",
    )
    with pytest.raises(ModelNotFound):
        await gen.prepare(GenerationRequest(model="some-random-name-123", prompt="x"))
    after = sample(
        "hotswap_requests_total",
        adapter="unknown",
        version="",
        protocol="http",
        route="generate",
        status="model_not_found",
    )
    assert after == before + 1


async def test_outcomes_tokens_and_stats() -> None:
    gen, _ = service(reply='{"label": "x"}')
    before = adapter_stats("a", LabelTracker())
    tokens_before = sample("hotswap_completion_tokens_total", adapter="a", protocol="grpc")
    prepared = await gen.prepare(GenerationRequest(model="a", task_input="hi", protocol="grpc"))
    (result,) = await gen.complete(prepared, "m1")
    assert result.valid is True
    after = adapter_stats("a", LabelTracker())
    assert after.valid == before.valid + 1 and after.validity_rate is not None
    assert sample("hotswap_completion_tokens_total", adapter="a", protocol="grpc") == (
        tokens_before + result.completion_tokens
    )
    ok = sample(
        "hotswap_requests_total",
        adapter="a",
        version="1",
        protocol="grpc",
        route="generate",
        status="ok",
    )
    assert ok >= 1
