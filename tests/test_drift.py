"""Drift statistics and the sliding-window monitor (server/metrics/drift.py)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from server.metrics.drift import (
    DEFAULT_OTHER_MASS,
    OTHER_LABEL,
    DriftMonitor,
    DriftThresholds,
    ReferenceDistribution,
    chi2_pvalue,
    js_distance,
    pool_bins,
    psi,
    smoothed,
)

REFERENCE = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
WINDOW = 200


def sample(probabilities: dict[str, float], size: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    labels = list(probabilities)
    return [labels[i] for i in rng.choice(len(labels), size=size, p=list(probabilities.values()))]


def monitor(window: int = WINDOW, thresholds: DriftThresholds | None = None) -> DriftMonitor:
    reference = ReferenceDistribution(REFERENCE)
    if thresholds is None:
        return DriftMonitor(reference, window_size=window)
    return DriftMonitor(reference, window_size=window, thresholds=thresholds)


def feed(drift: DriftMonitor, labels: list[str]) -> None:
    for label in labels:
        drift.observe(label)


# --- statistics ---------------------------------------------------------------------------


def test_js_distance_matches_hand_computation() -> None:
    # m = (0.75, 0.25); KL(p||m) = log2(4/3); KL(q||m) = 0.5*log2(2/3) + 0.5*log2(2)
    divergence = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert float(js_distance([1.0, 0.0], [0.5, 0.5])) == pytest.approx(math.sqrt(divergence))
    assert float(js_distance([1.0, 0.0], [0.5, 0.5])) == pytest.approx(0.557923, abs=1e-6)
    assert float(js_distance([0.2, 0.8], [0.2, 0.8])) == pytest.approx(0.0, abs=1e-12)
    assert float(js_distance([1.0, 0.0], [0.0, 1.0])) == pytest.approx(1.0)
    rows = js_distance([1.0, 0.0], [[0.5, 0.5], [1.0, 0.0]])  # one reference, many windows
    np.testing.assert_allclose(rows, [math.sqrt(divergence), 0.0], atol=1e-12)


def test_psi_matches_hand_computation() -> None:
    # 0.3 * ln(0.8 / 0.5) + (-0.3) * ln(0.2 / 0.5) = 0.3 * ln 4
    assert float(psi([0.5, 0.5], [0.8, 0.2])) == pytest.approx(0.3 * math.log(4))
    assert float(psi([0.5, 0.5], [0.5, 0.5])) == 0.0


def test_smoothed_adds_the_pseudo_count_to_every_bin() -> None:
    np.testing.assert_allclose(
        smoothed([3, 0, 1], pseudo_count=0.5), [3.5 / 5.5, 0.5 / 5.5, 1.5 / 5.5]
    )


def test_chi2_pvalue_matches_hand_computation() -> None:
    # expected (20, 20): statistic (10^2 + 10^2) / 20 = 10 with 1 degree of freedom
    assert float(chi2_pvalue([30, 10], [0.5, 0.5])) == pytest.approx(math.erfc(math.sqrt(5)))


def test_chi2_pvalue_is_vectorised_and_needs_equal_totals() -> None:
    pvalues = chi2_pvalue([[30, 10], [20, 20]], [0.5, 0.5])
    np.testing.assert_allclose(pvalues, [math.erfc(math.sqrt(5)), 1.0])
    with pytest.raises(ValueError, match="same number of observations"):
        chi2_pvalue([[30, 10], [20, 10]], [0.5, 0.5])


def test_pool_bins_gives_every_group_at_least_the_minimum() -> None:
    expected = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 10.0])
    groups = pool_bins(expected)
    assert groups.tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert np.bincount(groups, weights=expected).tolist() == [7.0, 10.0]
    # a short remainder with nothing pooled before it joins the smallest large bin
    assert pool_bins([2.0, 2.0, 10.0, 20.0]).tolist() == [0, 0, 0, 1]
    assert pool_bins([1.0, 1.0]).tolist() == [0, 0]
    assert pool_bins([1.0, 1.0, 3.0], min_expected=0.0).tolist() == [0, 1, 2]


def test_single_pooled_group_means_no_test() -> None:
    assert float(chi2_pvalue([3, 0, 0], [0.4, 0.3, 0.3])) == 1.0


def test_pooled_chi2_holds_its_level_with_77_sparse_classes() -> None:
    rng = np.random.default_rng(7)
    reference = rng.dirichlet(np.full(77, 5.0))
    counts = rng.multinomial(100, reference, size=20_000)  # expected counts 0.4 .. 3.2
    pooled = float(np.mean(chi2_pvalue(counts, reference) < 0.01))
    plain = float(np.mean(chi2_pvalue(counts, reference, min_expected=0.0) < 0.01))
    assert 0.0075 < pooled < 0.0125
    assert plain > 0.013  # the plain test is anti-conservative here


# --- reference ------------------------------------------------------------------------------


def test_reference_adds_the_other_bin_and_renormalises() -> None:
    reference = ReferenceDistribution({"a": 0.6004, "b": 0.4})
    assert reference.labels == ("a", "b", OTHER_LABEL)
    assert reference.probabilities.sum() == pytest.approx(1.0)
    assert reference.probabilities[-1] == DEFAULT_OTHER_MASS
    assert reference.probabilities[0] == pytest.approx(0.6004 / 1.0004 * (1 - DEFAULT_OTHER_MASS))


def test_unknown_labels_go_to_the_other_bin() -> None:
    reference = ReferenceDistribution(REFERENCE)
    assert reference.index("c") == 2
    assert reference.index("not_an_intent") == reference.index(OTHER_LABEL) == 4
    drift = monitor()
    feed(drift, ["not_an_intent", "also_unknown"] * (WINDOW // 2))
    status = drift.status()
    assert status.drifted
    # the window is all in the other bin: JS distance against (0.4, 0.3, 0.2, 0.1, 0.001) * ~1
    window = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    assert status.js_distance == pytest.approx(float(js_distance(reference.probabilities, window)))
    assert status.js_distance > 0.95


@pytest.mark.parametrize(
    ("probabilities", "message"),
    [
        ({}, "empty"),
        ({"a": 0.5, "b": 0.4}, "sum to 1"),
        ({"a": 0.5, "b": 0.5, "c": 0.0}, "'c' must be > 0"),
        ({"a": 1.5, "b": -0.5}, "'b' must be > 0"),
        ({"a": 1.0, "b": math.nan}, "'b' must be > 0"),
        ({"a": 0.5, OTHER_LABEL: 0.5}, "reserved"),
    ],
)
def test_invalid_reference_is_rejected(probabilities: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReferenceDistribution(probabilities)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="other_mass"):
        ReferenceDistribution(REFERENCE, other_mass=0.0)
    with pytest.raises(ValueError, match="false_alarm_per_window"):
        DriftThresholds(false_alarm_per_window=1.0)
    with pytest.raises(ValueError, match="min_fill"):
        DriftThresholds(min_fill=0.0)
    with pytest.raises(ValueError, match="window_size"):
        DriftMonitor(ReferenceDistribution(REFERENCE), window_size=0)


# --- monitor --------------------------------------------------------------------------------


def test_empty_window_reports_no_drift() -> None:
    status = monitor().status()
    assert (status.psi, status.js_distance, status.chi2_pvalue) == (0.0, 0.0, 1.0)
    assert (status.count, status.window_fill, status.drifted) == (0, 0.0, False)


def test_reference_traffic_is_not_drift() -> None:
    drift = monitor()
    feed(drift, sample(REFERENCE, WINDOW, seed=1))
    status = drift.status()
    assert not status.drifted
    assert status.chi2_pvalue > 0.05
    assert status.psi < 0.05
    assert status.js_distance < 0.1


def test_status_is_the_statistics_of_the_window() -> None:
    drift = monitor(window=10)
    feed(drift, ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["x"])
    counts = np.array([4, 3, 2, 0, 1])
    p = drift.reference.probabilities
    status = drift.status()
    assert status.psi == pytest.approx(float(psi(p, smoothed(counts))))
    assert status.js_distance == pytest.approx(float(js_distance(p, counts / 10)))
    assert status.chi2_pvalue == pytest.approx(float(chi2_pvalue(counts, p)))


def test_large_shift_is_detected_then_clears_after_a_window_of_reference_traffic() -> None:
    drift = monitor()
    feed(drift, sample(REFERENCE, WINDOW, seed=2))
    assert not drift.status().drifted
    feed(drift, sample({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.7}, WINDOW // 2, seed=3))
    shifted = drift.status()
    assert shifted.drifted
    assert shifted.chi2_pvalue < 1e-10
    feed(drift, sample(REFERENCE, WINDOW, seed=4))
    cleared = drift.status()
    assert not cleared.drifted
    assert cleared.count == WINDOW


def test_window_fill_and_no_drift_before_min_fill() -> None:
    drift = monitor()
    feed(drift, ["d"] * 50)
    status = drift.status()
    assert (status.count, status.window_fill) == (50, 0.25)
    assert status.chi2_pvalue < 1e-10
    assert not status.drifted  # the default min_fill is a full window
    feed(drift, ["d"] * 200)
    status = drift.status()
    assert (status.count, status.window_fill, status.drifted) == (WINDOW, 1.0, True)


def test_min_fill_threshold() -> None:
    drift = monitor(thresholds=DriftThresholds(min_fill=0.5))
    feed(drift, ["d"] * 99)
    assert not drift.status().drifted
    drift.observe("d")
    assert drift.status().drifted


def test_concurrent_observations_are_all_counted() -> None:
    drift = monitor(window=10_000)
    labels = sample(REFERENCE, 1_000, seed=5)
    done = threading.Event()
    statuses = []

    def read() -> None:
        while not done.is_set():
            statuses.append(drift.status())

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=feed, args=(drift, labels)) for _ in range(8)]
    reader.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    done.set()
    reader.join()
    assert drift.status().count == 8_000
    assert statuses
    assert all(0 <= status.count <= 8_000 for status in statuses)
