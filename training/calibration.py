"""Label probabilities of a classification adapter on held-out data, with no engine in sight.

- `run_label_searches` drives many `adapters.label_trie.LabelSearch`es at once, one batch of
  forward passes per round; the engine is a callable (`training.evaluate.Engine` gives vLLM's),
  so tests need none.
- `fit_temperature` fits temperature scaling (one temperature dividing the log-probabilities at
  every branching point of the label trie) by the mean negative log-likelihood of the true
  labels on the validation split.
- `expected_calibration_error` measures how far confidence is from accuracy.
- `predicted_distribution` is the drift reference written into the manifest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from scipy.optimize import minimize_scalar

from adapters.label_trie import LabelPrefix, LabelSearch, LabelTrie

Known = Mapping[LabelPrefix, Mapping[int, float]]
"""Next-token log-probabilities at the branching points expanded for one text."""
Forward = Callable[[Sequence[tuple[int, LabelPrefix]]], Sequence[Mapping[int, float]]]
"""One batch of forward passes: for each (text index, branching point), the log-probabilities
of that branching point's children after the text's prompt and the point's tokens."""
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range `fit_temperature` searches (on a log scale)."""
PSEUDO_COUNT = 0.5
"""Added to every label's count in `predicted_distribution`."""


def run_label_searches(searches: Sequence[LabelSearch], forward: Forward, *, full: bool) -> int:
    """Expand `searches` (one per text) until none needs a forward pass; each round hands
    `forward` every pending (search index, branching point) pair as one batch.

    `full` expands every branching point (one round; what fitting a temperature needs);
    otherwise each search asks for what its best-first expansion wants. Returns the number of
    forward passes made.
    """
    passes = 0
    while batch := [(i, node) for i, s in enumerate(searches) for node in _wanted(s, full)]:
        for (i, node), logprobs in zip(batch, forward(batch), strict=True):
            searches[i].add(node, logprobs)
        passes += len(batch)
    return passes


def _wanted(search: LabelSearch, full: bool) -> list[LabelPrefix]:
    if full:
        return [node for node in search.trie.branching_points if node not in search.known]
    return search.pending()


def mean_nll(trie: LabelTrie, examples: Sequence[tuple[Known, int]], temperature: float) -> float:
    """Mean negative log-probability of the true labels at `temperature`; each example is
    (known log-probabilities of every branching point on its label's path, label index)."""
    total = sum(trie.label_logprob(known, label, temperature) for known, label in examples)
    return -total / len(examples)


def fit_temperature(trie: LabelTrie, examples: Sequence[tuple[Known, int]]) -> float:
    """The temperature in `TEMPERATURE_BOUNDS` that minimises `mean_nll` (bounded scalar
    search over log T). Raises ValueError without examples."""
    if not examples:
        raise ValueError("fitting a temperature needs at least one example")
    low, high = (math.log(t) for t in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: mean_nll(trie, examples, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 15
) -> float:
    """ECE over `bins` equal-width confidence bins (lo, hi]: the mean over examples of
    |accuracy - mean confidence| of each example's bin. Raises ValueError on empty or
    mismatched inputs."""
    if not confidences or len(confidences) != len(correct):
        raise ValueError("ECE needs as many correctness flags as confidences, at least one")
    gaps = [0.0] * bins
    for confidence, ok in zip(confidences, correct, strict=True):
        index = min(max(math.ceil(confidence * bins) - 1, 0), bins - 1)
        gaps[index] += float(ok) - confidence
    return sum(abs(gap) for gap in gaps) / len(confidences)


def predicted_distribution(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Label frequencies of `predictions`, every label present, summing to 1.

    `PSEUDO_COUNT` is added to every label's count (additive smoothing) so that a label the
    adapter never predicted on held-out data has a small, non-zero share: the drift reference
    must have no empty bin, or one live prediction of that label would read as infinite drift.
    """
    counts = Counter(predictions)
    total = sum(counts[label] for label in labels) + PSEUDO_COUNT * len(labels)
    return {label: (counts[label] + PSEUDO_COUNT) / total for label in labels}
