"""Label-distribution drift of one adapter: the last N labels against a reference distribution.

A `DriftMonitor` keeps a sliding window of the last `window_size` labels an adapter produced
(running counts and a deque: O(1) per observation, guarded by a lock) and compares the window
with the reference label distribution from the adapter's manifest:

- PSI, the population stability index, on the window smoothed with `SMOOTHING` per bin;
- the Jensen–Shannon distance (base 2, in [0, 1]) on the raw window;
- the p-value of Pearson's chi-square goodness-of-fit test, with rare labels pooled until every
  pooled bin expects at least `MIN_EXPECTED` observations (Cochran's rule), which keeps the
  chi-square approximation valid for 77 classes in a window of a few hundred.

Labels outside the reference go to one extra bin, `OTHER_LABEL`, given a small reference mass.
`drifted` is decided by the chi-square test alone, at a per-evaluation level of
`false_alarm_per_window / window_size` (Bonferroni over the evaluations a window of N labels
sees), so that evaluating after every label still keeps false alarms below the per-window goal.
docs/drift.md has the measurements behind the defaults.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OTHER_LABEL = "__other__"
"""The bin of every label the reference does not name."""

DEFAULT_OTHER_MASS = 1e-3
"""Reference probability given to `OTHER_LABEL`; the named labels share the rest."""

DEFAULT_WINDOW_SIZE = 200
"""Labels in the sliding window (see docs/drift.md for why 200)."""

SMOOTHING = 0.5
"""Pseudo-count added to every bin of the window before PSI (Jeffreys prior), so it stays finite."""

MIN_EXPECTED = 5.0
"""Smallest expected count of a bin in the chi-square test; rarer labels are pooled."""

SUM_TOLERANCE = 1e-3
"""How far from 1 the reference probabilities may sum (rounded manifests); they are renormalised."""


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """When a window counts as drifted: chi-square p-value below the level, window full enough.

    Attributes:
        false_alarm_per_window: Chance of a false alarm within any N consecutive labels when the
            traffic follows the reference, even if drift is evaluated after every label. The
            per-evaluation level is this divided by the window size (Bonferroni).
        min_fill: Share of the window that must be filled before drift can be reported.
    """

    false_alarm_per_window: float = 0.01
    min_fill: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm_per_window < 1.0:
            raise ValueError(
                f"false_alarm_per_window must be in (0, 1), got {self.false_alarm_per_window}"
            )
        if not 0.0 < self.min_fill <= 1.0:
            raise ValueError(f"min_fill must be in (0, 1], got {self.min_fill}")

    def test_level(self, window_size: int) -> float:
        """Significance level of one evaluation of the chi-square test."""
        return self.false_alarm_per_window / window_size


DEFAULT_THRESHOLDS = DriftThresholds()


@dataclass(frozen=True, slots=True)
class DriftStatus:
    """One adapter's drift, computed from its window at one moment.

    Attributes:
        psi: Population stability index of the smoothed window against the reference.
        js_distance: Jensen–Shannon distance (base 2) of the window from the reference.
        chi2_pvalue: p-value of the pooled chi-square goodness-of-fit test.
        window_fill: Labels in the window divided by the window size, in [0, 1].
        count: Labels in the window.
        drifted: Whether the window is full enough and the p-value is below the test level.
    """

    psi: float
    js_distance: float
    chi2_pvalue: float
    window_fill: float
    count: int
    drifted: bool


class ReferenceDistribution:
    """A validated reference label distribution, plus the `OTHER_LABEL` bin as the last bin."""

    def __init__(
        self, probabilities: Mapping[str, float], other_mass: float = DEFAULT_OTHER_MASS
    ) -> None:
        if not probabilities:
            raise ValueError("reference distribution is empty: it needs at least one label")
        if OTHER_LABEL in probabilities:
            raise ValueError(f"{OTHER_LABEL!r} is reserved for labels outside the reference")
        if not 0.0 < other_mass < 1.0:
            raise ValueError(f"other_mass must be in (0, 1), got {other_mass}")
        for label, probability in probabilities.items():
            if not (math.isfinite(probability) and probability > 0.0):
                raise ValueError(
                    f"reference probability of {label!r} must be > 0, got {probability}; "
                    f"leave out labels that never occur (they count as {OTHER_LABEL!r})"
                )
        total = math.fsum(probabilities.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ValueError(
                f"reference probabilities must sum to 1 (within {SUM_TOLERANCE}), got {total:.6g}"
            )
        named = (
            np.array(list(probabilities.values()), dtype=np.float64) * (1.0 - other_mass) / total
        )
        self.labels: tuple[str, ...] = (*probabilities, OTHER_LABEL)
        self.probabilities: FloatArray = np.append(named, other_mass)
        self.probabilities.setflags(write=False)
        self._index = {label: i for i, label in enumerate(self.labels)}

    def index(self, label: str) -> int:
        """The bin of `label`: its own if the reference names it, else the `OTHER_LABEL` bin."""
        return self._index.get(label, len(self.labels) - 1)


def smoothed(counts: npt.ArrayLike, pseudo_count: float = SMOOTHING) -> FloatArray:
    """Counts turned into probabilities after adding `pseudo_count` to every bin (last axis)."""
    padded = np.asarray(counts, dtype=np.float64) + pseudo_count
    return padded / padded.sum(axis=-1, keepdims=True)


def psi(reference: npt.ArrayLike, observed: npt.ArrayLike) -> FloatArray:
    """Population stability index sum((q - p) * ln(q / p)) along the last axis.

    Both distributions must be strictly positive (smooth the observed one with `smoothed`).
    """
    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(observed, dtype=np.float64)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1), dtype=np.float64)


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> FloatArray:
    """Jensen–Shannon distance in bits along the last axis: 0 if equal, 1 if disjoint."""
    p_arr, q_arr = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    mean = (p_arr + q_arr) / 2.0
    divergence = (_kl_bits(p_arr, mean) + _kl_bits(q_arr, mean)) / 2.0
    return np.asarray(np.sqrt(np.clip(divergence, 0.0, 1.0)), dtype=np.float64)


def _kl_bits(p: FloatArray, q: FloatArray) -> FloatArray:
    """Kullback–Leibler divergence in bits along the last axis, with 0 * log(0) = 0."""
    ratio = np.divide(p, q, out=np.ones_like(p), where=p > 0.0)
    return np.asarray(np.sum(p * np.log2(ratio), axis=-1), dtype=np.float64)


def pool_bins(expected: npt.ArrayLike, min_expected: float = MIN_EXPECTED) -> IntArray:
    """Group ids for bins such that every group expects at least `min_expected` observations.

    Bins already at `min_expected` keep a group of their own. The others are pooled in order of
    increasing expectation; a remainder still short of `min_expected` joins the last pooled
    group, or else the smallest large bin. If even all bins together fall short, there is one
    group (and no test).
    """
    values = np.asarray(expected, dtype=np.float64)
    groups = np.zeros(values.shape, dtype=np.int64)
    order = np.argsort(values, kind="stable")
    small = [int(i) for i in order if values[i] < min_expected]
    large = [int(i) for i in order if values[i] >= min_expected]
    group, total, pending = 0, 0.0, []
    last_pooled: int | None = None
    for i in small:
        pending.append(i)
        total += float(values[i])
        if total >= min_expected:
            groups[pending] = group
            last_pooled = group
            group, total, pending = group + 1, 0.0, []
    for i in large:
        groups[i] = group
        group += 1
    if pending:
        if last_pooled is not None:
            groups[pending] = last_pooled
        elif large:
            groups[pending] = groups[large[0]]
    return groups


def chi2_pvalue(
    counts: npt.ArrayLike, reference: npt.ArrayLike, min_expected: float = MIN_EXPECTED
) -> FloatArray:
    """p-value of Pearson's goodness-of-fit test of `counts` against `reference` (last axis).

    Bins are pooled with `pool_bins` for the number of observations, which must be the same
    along the leading axes; `min_expected=0` gives the plain test on every bin.
    """
    observed = np.asarray(counts, dtype=np.float64)
    p = np.asarray(reference, dtype=np.float64)
    totals = observed.sum(axis=-1)
    n = float(totals.flat[0]) if totals.size else 0.0
    if not np.all(totals == n):
        raise ValueError("chi2_pvalue needs the same number of observations in every row")
    groups = pool_bins(n * p, min_expected)
    n_groups = int(groups.max()) + 1
    if n_groups < 2:
        return np.ones(totals.shape, dtype=np.float64)
    membership = np.eye(n_groups)[groups]
    pooled_observed = observed @ membership
    pooled_expected = n * (p @ membership)
    statistic = np.sum((pooled_observed - pooled_expected) ** 2 / pooled_expected, axis=-1)
    return np.asarray(special.chdtrc(n_groups - 1, statistic), dtype=np.float64)


class DriftMonitor:
    """Sliding-window drift of one adapter's labels against its reference; thread-safe.

    `observe` is O(1) (running counts plus a deque of the window); `status` is O(bins) and
    copies the counts under the lock, so it can be called after every label or at scrape time.
    """

    def __init__(
        self,
        reference: ReferenceDistribution,
        window_size: int = DEFAULT_WINDOW_SIZE,
        thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self.reference = reference
        self.window_size = window_size
        self.thresholds = thresholds
        self._window: deque[int] = deque()
        self._counts = np.zeros(len(reference.labels), dtype=np.int64)
        self._lock = threading.Lock()

    def observe(self, label: str) -> None:
        """Add one produced label to the window, evicting the oldest once the window is full."""
        bin_index = self.reference.index(label)
        with self._lock:
            self._window.append(bin_index)
            self._counts[bin_index] += 1
            if len(self._window) > self.window_size:
                self._counts[self._window.popleft()] -= 1

    def status(self) -> DriftStatus:
        """Drift of the current window; an empty window reports zeros and no drift."""
        with self._lock:
            counts = self._counts.copy()
        count = int(counts.sum())
        fill = count / self.window_size
        if count == 0:
            return DriftStatus(
                psi=0.0, js_distance=0.0, chi2_pvalue=1.0, window_fill=0.0, count=0, drifted=False
            )
        p = self.reference.probabilities
        pvalue = float(chi2_pvalue(counts, p))
        level = self.thresholds.test_level(self.window_size)
        return DriftStatus(
            psi=float(psi(p, smoothed(counts))),
            js_distance=float(js_distance(p, counts / count)),
            chi2_pvalue=pvalue,
            window_fill=fill,
            count=count,
            drifted=fill >= self.thresholds.min_fill and pvalue < level,
        )
