"""What each version of a rollout produced, and the comparison of the two.

Counts are kept from the rollout's start, so candidate and current are compared over the same
window of time; latencies keep the last `LATENCY_WINDOW` of each version for the p95. The
label distance is `server.metrics.drift.js_distance`, the drift monitor's own statistic.

The distance between two samples is biased up by chance alone, the more so the more labels
and the fewer answers (two samples of 100 answers from one 77-label distribution are about
0.6 apart). So the gate judges the distance beyond chance: the observed distance minus the
95th percentile of the distances between random splits of the pooled labels into groups of
the same sizes (a permutation test, `NULL_ROUNDS` splits, seeded so a decision is
reproducible; each split is drawn from the label counts, so its cost does not grow with
the number of answers).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from server.metrics.drift import js_distance
from server.rollouts.gates import Figures

LATENCY_WINDOW = 2_000
NULL_ROUNDS = 200
NULL_QUANTILE = 0.95


@dataclass(frozen=True)
class Outcome:
    """One answer of a version under a rollout. `valid` is None without a schema; `error`
    marks a request the engine failed (a client that went away records nothing)."""

    latency_s: float
    error: bool = False
    valid: bool | None = None
    labels: tuple[str, ...] = ()


@dataclass
class ArmStats:
    """The running figures of one version of a rollout."""

    requests: int = 0
    errors: int = 0
    valid: int = 0
    invalid: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        if outcome.error:
            self.errors += 1
            return
        self.latencies.append(outcome.latency_s)
        if outcome.valid is not None:
            self.valid += outcome.valid
            self.invalid += not outcome.valid
        self.labels.update(outcome.labels)

    @property
    def validity(self) -> float | None:
        judged = self.valid + self.invalid
        return self.valid / judged if judged else None

    @property
    def p95_s(self) -> float | None:
        return float(np.percentile(self.latencies, 95)) if self.latencies else None


def label_distance(candidate: Counter[str], current: Counter[str]) -> float | None:
    """Jensen-Shannon distance (base 2) of two label counts over the union of their labels;
    None when either has no label."""
    if not candidate or not current:
        return None
    labels = sorted(candidate.keys() | current.keys())
    p = np.array([candidate[label] for label in labels], dtype=np.float64)
    q = np.array([current[label] for label in labels], dtype=np.float64)
    return float(js_distance(p / p.sum(), q / q.sum()))


def chance_distance(candidate: Counter[str], current: Counter[str], seed: int = 0) -> float | None:
    """The `NULL_QUANTILE` quantile of the label distance between random splits of both
    versions' labels pooled, in groups of their sizes: what chance alone gives."""
    if not candidate or not current:
        return None
    labels = sorted(candidate.keys() | current.keys())
    totals = np.array([candidate[label] + current[label] for label in labels], dtype=np.int64)
    size = sum(candidate.values())
    # a random split's first group is a multivariate hypergeometric draw: O(labels) a round
    rng = np.random.default_rng(seed)
    first = rng.multivariate_hypergeometric(totals, size, size=NULL_ROUNDS, method="marginals")
    second = totals - first
    distances = js_distance(
        first / first.sum(axis=1, keepdims=True), second / second.sum(axis=1, keepdims=True)
    )
    return float(np.quantile(distances, NULL_QUANTILE))


def compare(
    candidate: ArmStats,
    current: ArmStats,
    agreements: tuple[int, int] | None,
    shadow_dropped: int = 0,
    with_chance: bool = False,
) -> Figures:
    """The figures of a rollout; `agreements` (agreed, compared) for a shadow one;
    `with_chance`: also the label distance chance gives (a permutation test: for decisions,
    not for every answer's gauges)."""
    agreed, compared = agreements or (0, 0)
    chance = chance_distance(candidate.labels, current.labels) if with_chance else None
    return Figures(
        candidate_requests=candidate.requests,
        current_requests=current.requests,
        candidate_validity=candidate.validity,
        current_validity=current.validity,
        label_js_distance=label_distance(candidate.labels, current.labels),
        label_js_chance=chance,
        shadow_agreement=agreed / compared if compared else None,
        candidate_p95_s=candidate.p95_s,
        current_p95_s=current.p95_s,
        candidate_error_rate=candidate.errors / candidate.requests if candidate.requests else 0.0,
        shadow_dropped=shadow_dropped,
    )
