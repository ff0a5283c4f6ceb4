"""The gates' verdict on a rollout's figures, the figures from answers, and the validation
of a rollout request."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from adapters.rollouts import RolloutMode
from server.errors import InvalidRequest
from server.metrics.drift import js_distance
from server.rollouts.gates import Figures, Gates, judge
from server.rollouts.plan import parse_plan
from server.rollouts.stats import ArmStats, Outcome, chance_distance, compare, label_distance

GATES = Gates(min_requests=20)


def figures(**changes: object) -> Figures:
    values: dict[str, object] = {
        "candidate_requests": 20,
        "current_requests": 60,
        "candidate_validity": 1.0,
        "current_validity": 1.0,
        "label_js_distance": 0.25,
        "label_js_chance": 0.2,
        "shadow_agreement": None,
        "candidate_p95_s": 0.10,
        "current_p95_s": 0.09,
        "candidate_error_rate": 0.0,
    }
    values.update(changes)
    return Figures(**values)  # type: ignore[arg-type]


def test_nothing_is_decided_before_both_versions_reach_the_minimum() -> None:
    assert judge(GATES, figures(candidate_requests=19), shadow=False) is None
    assert judge(GATES, figures(current_requests=19), shadow=False) is None


def test_every_gate_holding_promotes() -> None:
    verdict = judge(GATES, figures(), shadow=False)
    assert verdict is not None and verdict.promote
    assert "20 candidate requests" in verdict.reason


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"candidate_error_rate": 0.05}, "error rate 0.05 > 0.01"),
        ({"candidate_validity": 0.9}, "validity drop 0.1 > 0.02"),
        ({"label_js_distance": 0.6}, "label JS beyond chance 0.4 > 0.1"),
        ({"candidate_p95_s": 0.2, "current_p95_s": 0.1}, "p95 latency ratio 2 > 1.5"),
    ],
)
def test_any_failing_gate_rolls_back_and_is_named(changes: dict[str, object], named: str) -> None:
    verdict = judge(GATES, figures(**changes), shadow=False)
    assert verdict is not None and not verdict.promote
    assert verdict.reason == f"gates failed: {named}"


def test_shadow_agreement_is_judged_in_shadow_mode_only() -> None:
    low = figures(shadow_agreement=0.5)
    shadow = judge(GATES, low, shadow=True)
    assert (
        shadow is not None and not shadow.promote and "shadow agreement 0.5 < 0.9" in shadow.reason
    )
    canary = judge(GATES, low, shadow=False)
    assert canary is not None and canary.promote


def test_a_gate_without_data_holds() -> None:
    bare = figures(
        candidate_validity=None,
        label_js_distance=None,
        label_js_chance=None,
        candidate_p95_s=None,
        current_p95_s=None,
    )
    verdict = judge(GATES, bare, shadow=False)
    assert verdict is not None and verdict.promote
    assert bare.validity_drop is None and bare.p95_latency_ratio is None


def test_figures_come_from_the_answers_of_both_versions() -> None:
    candidate, current = ArmStats(), ArmStats()
    for latency in (0.1, 0.2, 0.3, 0.4):
        candidate.add(Outcome(latency_s=latency, valid=True, labels=("buy",)))
    candidate.add(Outcome(latency_s=9.0, error=True))
    for i in range(10):
        current.add(Outcome(latency_s=0.1, valid=i != 0, labels=("buy" if i % 2 else "sell",)))
    result = compare(candidate, current, None)
    assert result.label_js_chance is None and result.label_js_excess is None
    judged = compare(candidate, current, None, with_chance=True)
    assert judged.label_js_chance == chance_distance(candidate.labels, current.labels)
    assert judged.as_dict()["label_js_excess"] == pytest.approx(
        judged.label_js_distance - judged.label_js_chance  # type: ignore[operator]
    )
    assert result.candidate_requests == 5 and result.current_requests == 10
    assert result.candidate_error_rate == pytest.approx(0.2)
    assert result.candidate_validity == 1.0 and result.current_validity == pytest.approx(0.9)
    assert result.validity_drop == pytest.approx(-0.1)
    assert result.candidate_p95_s == pytest.approx(0.385)  # the error's time is left out
    assert result.p95_latency_ratio == pytest.approx(3.85)
    expected = float(js_distance([1.0, 0.0], [0.5, 0.5]))
    assert result.label_js_distance == pytest.approx(expected)
    assert result.shadow_agreement is None
    assert compare(candidate, current, (3, 4)).shadow_agreement == pytest.approx(0.75)


def test_the_label_gate_judges_the_distance_beyond_chance() -> None:
    # 77 labels, 100 answers each from one distribution: far apart by chance alone
    rng = np.random.default_rng(7)
    labels = [f"l{i}" for i in range(77)]
    candidate = Counter(rng.choice(labels, 100).tolist())
    current = Counter(rng.choice(labels, 300).tolist())
    observed, chance = label_distance(candidate, current), chance_distance(candidate, current)
    assert observed is not None and chance is not None
    assert observed > 0.4 and observed - chance < 0.1  # raw distance fails, excess holds
    assert chance_distance(candidate, current) == chance  # seeded: a decision is reproducible
    # a version whose labels collapse onto a quarter of them departs beyond chance
    collapsed = Counter(rng.choice(labels[:20], 100).tolist())
    departed = label_distance(collapsed, current)
    assert departed is not None and departed - chance_distance(collapsed, current) > 0.1  # type: ignore[operator]


def test_the_label_distance_is_the_drift_monitors_js_distance() -> None:
    same = Counter({"a": 3, "b": 1})
    assert label_distance(same, Counter({"a": 30, "b": 10})) == pytest.approx(0.0)
    assert label_distance(Counter({"a": 5}), Counter({"b": 5})) == pytest.approx(1.0)
    assert label_distance(Counter(), same) is None


def test_a_rollout_request_is_validated_with_defaults() -> None:
    plan = parse_plan({"version": 2, "percent": 25, "gates": {"min_requests": 20}})
    assert plan.mode is RolloutMode.CANARY and plan.share == 25.0
    assert plan.gates == Gates(min_requests=20)
    shadow = parse_plan({"version": 2, "mode": "shadow"})
    assert shadow.share == 0.0 and shadow.gates == Gates()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"version": 2}, "percent: a canary needs"),
        ({"version": 2, "percent": 100}, "percent: Input should be less than 100"),
        ({"version": 2, "percent": 0}, "percent: Input should be greater than 0"),
        ({"version": 2, "percent": float("nan")}, "percent: Input should be a finite number"),
        ({"version": 2, "mode": "shadow", "percent": 5}, "percent: a shadow rollout"),
        ({"version": 2, "mode": "blue-green", "percent": 5}, "mode: Input should be"),
        ({"version": 0, "percent": 5}, "version: Input should be greater than or equal to 1"),
        ({"version": 2, "percent": 5, "gates": {"max_label_js": 1.5}}, "gates.max_label_js"),
        ({"version": 2, "percent": 5, "gates": {"min_requests": 0}}, "gates.min_requests"),
        (
            {"version": 2, "percent": 5, "gates": {"max_p95_latency_ratio": 0.5}},
            "gates.max_p95_latency_ratio",
        ),
        ({"version": 2, "percent": 5, "gates": {"typo": 1}}, "gates.typo: Extra inputs"),
    ],
)
def test_a_bad_rollout_request_names_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_plan(fields)
    assert named in error.value.message
