"""Label probabilities of a classification adapter on held-out data, with no engine in sight.

- `run_label_searches` drives many `adapters.label_trie.LabelSearch`es at once, one batch of
  forward passes per round; the engine is a callable (`training.evaluate.Engine` gives vLLM's),
  so tests need none.
- `fit_temperature` fits temperature scaling (one temperature dividing the log-probabilities at
  every branching point of the label trie) by the mean negative log-likelihood of the true
  labels on the validation split.
- `expected_calibration_error` measures how far confidence is from accuracy.
- `predicted_distribution` is the drift reference written into the manifest.
- A multi-label task's probabilities (each label's probability of being in the answer's set,
  `adapters.label_sets`) are fitted the same way by `fit_set_temperature`, by the binary
  log-loss of every label's membership, and `label_set_ece` measures them label by label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from scipy.optimize import minimize_scalar

from adapters.label_sets import LabelSetGrammar, LabelSetSearch, RoundSearch
from adapters.label_trie import LabelPrefix, LabelSearch, LabelTrie

Known = Mapping[LabelPrefix, Mapping[int, float]]
"""Next-token log-probabilities at the branching points expanded for one text."""
Forward = Callable[[Sequence[tuple[int, LabelPrefix]]], Sequence[Mapping[int, float]]]
"""One batch of forward passes: for each (text index, branching point), the log-probabilities
of that branching point's children after the text's prompt and the point's tokens."""
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range `fit_temperature` searches (on a log scale)."""
LOG_TEMPERATURE_PRIOR = 1.0
"""Standard deviation of the normal prior on log T that the fits maximise the posterior under.
With no validation error the likelihood alone keeps rising as T falls, to the bound (every
confidence would read 1: 14 demo texts, all right, fitted T = 0.05); over hundreds of texts
the prior moves T by little."""
PSEUDO_COUNT = 0.5
"""Added to every label's count in `predicted_distribution`."""
SetExample = tuple[Known, frozenset[str]]
"""A multi-label text: the next-token log-probabilities its label-set search read, and its
reference set of labels."""
PROBABILITY_CLIP = 1e-6
"""Label-set probabilities are clipped to [clip, 1 - clip] in the log-loss: they are lower
bounds, and a label the search never reached reads 0."""


def run_label_searches(searches: Sequence[RoundSearch], forward: Forward, *, full: bool) -> int:
    """Expand `searches` (one per text) until none needs a forward pass; each round hands
    `forward` every pending (search index, branching point) pair as one batch.

    `full` expands every branching point of a `LabelSearch` (one round; what fitting a
    temperature needs); otherwise each search asks for what its best-first expansion wants.
    Returns the number of forward passes made.
    """
    passes = 0
    while batch := [(i, node) for i, s in enumerate(searches) for node in _wanted(s, full)]:
        for (i, node), logprobs in zip(batch, forward(batch), strict=True):
            searches[i].add(node, logprobs)
        passes += len(batch)
    return passes


def _wanted(search: RoundSearch, full: bool) -> list[LabelPrefix]:
    if full and isinstance(search, LabelSearch):
        return [node for node in search.trie.branching_points if node not in search.known]
    return search.pending()


def mean_nll(trie: LabelTrie, examples: Sequence[tuple[Known, int]], temperature: float) -> float:
    """Mean negative log-probability of the true labels at `temperature`; each example is
    (known log-probabilities of every branching point on its label's path, label index)."""
    total = sum(trie.label_logprob(known, label, temperature) for known, label in examples)
    return -total / len(examples)


def fit_temperature(trie: LabelTrie, examples: Sequence[tuple[Known, int]]) -> float:
    """The temperature in `TEMPERATURE_BOUNDS` that minimises `mean_nll` under the prior
    `LOG_TEMPERATURE_PRIOR` (bounded scalar search over log T). Raises ValueError without
    examples."""
    if not examples:
        raise ValueError("fitting a temperature needs at least one example")
    return _minimising_temperature(lambda t: mean_nll(trie, examples, t), len(examples))


def _minimising_temperature(loss: Callable[[float], float], terms: int) -> float:
    """The temperature in `TEMPERATURE_BOUNDS` that maximises the posterior: `loss` is a mean
    negative log-likelihood over `terms` terms, to which the prior's share is added (bounded
    scalar search over log T)."""
    low, high = (math.log(t) for t in TEMPERATURE_BOUNDS)
    weight = 1.0 / (2.0 * LOG_TEMPERATURE_PRIOR**2 * terms)
    result = minimize_scalar(
        lambda log_t: loss(math.exp(log_t)) + weight * log_t**2,
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def set_probabilities(grammar: LabelSetGrammar, known: Known, temperature: float) -> list[float]:
    """Each label's probability of being in the answer's set (in `grammar.labels` order) from
    the log-probabilities a search read, at `temperature`; 0 for a label never reached."""
    distribution = LabelSetSearch(grammar, temperature, known=dict(known)).distribution()
    scored = dict(distribution.ranked)
    return [scored.get(label, 0.0) for label in grammar.labels]


def _membership(
    grammar: LabelSetGrammar, examples: Sequence[SetExample], temperature: float
) -> Iterator[tuple[float, bool]]:
    """Every (example, label) pair: the label's probability of being in the set, and whether
    the reference set holds it."""
    for known, truth in examples:
        probabilities = set_probabilities(grammar, known, temperature)
        for label, p in zip(grammar.labels, probabilities, strict=True):
            yield p, label in truth


def label_set_nll(
    grammar: LabelSetGrammar, examples: Sequence[SetExample], temperature: float
) -> float:
    """Mean binary log-loss, over every (example, label) pair, of the label's probability of
    being in the set against whether the reference set holds it (probabilities clipped to
    `PROBABILITY_CLIP`)."""
    total = 0.0
    for p, held in _membership(grammar, examples, temperature):
        p = min(max(p, PROBABILITY_CLIP), 1.0 - PROBABILITY_CLIP)
        total -= math.log(p if held else 1.0 - p)
    return total / (len(examples) * len(grammar.labels))


def fit_set_temperature(grammar: LabelSetGrammar, examples: Sequence[SetExample]) -> float:
    """The temperature in `TEMPERATURE_BOUNDS` that minimises `label_set_nll` under the prior
    `LOG_TEMPERATURE_PRIOR`. The searches
    were read at temperature 1: at another, the probabilities are those of the same branching
    points (still lower bounds). Raises ValueError without examples."""
    if not examples:
        raise ValueError("fitting a temperature needs at least one example")
    terms = len(examples) * len(grammar.labels)
    return _minimising_temperature(lambda t: label_set_nll(grammar, examples, t), terms)


def label_set_ece(
    grammar: LabelSetGrammar, examples: Sequence[SetExample], temperature: float
) -> float:
    """`expected_calibration_error` over every (example, label) pair: the probability that the
    label is in the set against whether the reference set holds it."""
    pairs = list(_membership(grammar, examples, temperature))
    return expected_calibration_error([p for p, _ in pairs], [held for _, held in pairs])


def thresholded_micro_f1(
    grammar: LabelSetGrammar, examples: Sequence[SetExample], temperature: float
) -> float:
    """Micro-F1 of the sets of labels whose probability is at least 1/2, against the
    references."""
    tp = fp = fn = 0
    for p, held in _membership(grammar, examples, temperature):
        chosen = p >= 0.5
        tp += chosen and held
        fp += chosen and not held
        fn += held and not chosen
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


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
