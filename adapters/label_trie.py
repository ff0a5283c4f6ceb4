"""Label probabilities of a classification task, from the model's next-token distributions over
the trie of its answers.

A single-label task answers `{"<field>":"<label>"}` (compact JSON, as training wrote it). The
token sequences of the labels' answers form a trie; a label's probability is the product, over
the trie's branching points on its path, of the model's probability of the label's next token
among the tokens that continue some label there. That is the probability that decoding under
the task's grammar at temperature 1 answers that label (each label written as training wrote
it). Between branching points the grammar leaves one token, whose factor is 1; so one forward
pass per branching point scores every label below it.

Calibration divides the log-probabilities at each branching point by a temperature fitted on
held-out data (`training.calibration`). `LabelSearch` expands the trie best-first: a subtree
whose probability is below a floor is not expanded (its labels are left unscored: the known
probabilities sum to at most 1), so a confident model needs a forward pass or two, not one per
branching point. Training and serving share this module, so they compute the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.json_grammar import compact_json

LabelPrefix = tuple[int, ...]
"""The token ids of an answer's beginning: a node of the trie."""
DEFAULT_FLOOR = 0.005
"""Subtrees less probable than this are not expanded."""
DEFAULT_MAX_EXPANSIONS = 64
"""Forward passes one search may ask for at most."""


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def label_answer(field_name: str, label: str) -> str:
    """The answer that carries `label`: compact JSON, as training writes its targets."""
    return compact_json({field_name: label})


def classification_field(
    schema: Mapping[str, Any] | None, labels: Sequence[str] | None
) -> str | None:
    """The field of a single-label task's schema, `{"<field>": {"enum": labels}}` and no other
    property; None when the schema is anything else (its answers are generated, not scored)."""
    if not schema or not labels or schema.get("type") != "object":
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or len(properties) != 1:
        return None
    ((name, spec),) = properties.items()
    if not isinstance(spec, dict) or list(spec.get("enum") or []) != list(labels):
        return None
    if schema.get("required") != [name]:
        return None
    return str(name)


@dataclass(frozen=True)
class Edge:
    """Where a child token leads: the next branching point, or a label (one left)."""

    branch: LabelPrefix | None = None
    label: int | None = None


@dataclass(frozen=True)
class LabelTrie:
    """The labels' answer token sequences and the trie's branching points."""

    labels: tuple[str, ...]
    sequences: tuple[LabelPrefix, ...]
    root: LabelPrefix | None
    """The first branching point (None for a single label)."""
    edges: Mapping[LabelPrefix, Mapping[int, Edge]]
    """Branching point -> next token -> where it leads."""

    @classmethod
    def build(cls, tokenizer: Tokenizer, field_name: str, labels: Sequence[str]) -> LabelTrie:
        """The trie of `labels`' answers as `tokenizer` encodes them. Raises ValueError when
        one answer's tokens begin another's (the trie would need the end-of-sequence token)."""
        sequences = tuple(
            tuple(tokenizer.encode(label_answer(field_name, label), add_special_tokens=False))
            for label in labels
        )
        return cls.from_sequences(labels, sequences)

    @classmethod
    def from_sequences(cls, labels: Sequence[str], sequences: Sequence[LabelPrefix]) -> LabelTrie:
        """The trie of one token sequence per label (`build`'s answers, or any others:
        `adapters.label_sets` builds tries of array items). Raises ValueError when one
        sequence begins another."""
        edges: dict[LabelPrefix, dict[int, Edge]] = {}
        root = _branch(sequences, range(len(sequences)), 0, edges) if len(labels) > 1 else None
        return cls(tuple(labels), tuple(sequences), root, edges)

    @property
    def branching_points(self) -> list[LabelPrefix]:
        return list(self.edges)

    def children(self, prefix: LabelPrefix) -> tuple[int, ...]:
        return tuple(self.edges[prefix])

    def label_logprob(
        self, known: Mapping[LabelPrefix, Mapping[int, float]], label: int, temperature: float
    ) -> float:
        """Log-probability of label number `label`; needs every branching point on its path."""
        total, node = 0.0, self.root
        sequence = self.sequences[label]
        while node is not None:
            token = sequence[len(node)]
            total += tempered(known[node], self.children(node), temperature)[token]
            node = self.edges[node][token].branch
        return total


def _branch(
    sequences: Sequence[LabelPrefix],
    members: Sequence[int],
    depth: int,
    edges: dict[LabelPrefix, dict[int, Edge]],
) -> LabelPrefix:
    """Add the branching point below `depth` shared by `members` (two or more) and the
    subtrees under it; returns its prefix."""
    first = sequences[members[0]]
    while all(len(sequences[m]) > depth and sequences[m][depth] == first[depth] for m in members):
        depth += 1
    if any(len(sequences[m]) == depth for m in members):
        raise ValueError("one label's answer tokens begin another's: labels cannot be scored")
    prefix = first[:depth]
    groups: dict[int, list[int]] = {}
    for m in members:
        groups.setdefault(sequences[m][depth], []).append(m)
    edges[prefix] = {
        token: Edge(label=group[0])
        if len(group) == 1
        else Edge(branch=_branch(sequences, group, depth + 1, edges))
        for token, group in sorted(groups.items())
    }
    return prefix


def tempered(
    logprobs: Mapping[int, float], children: Sequence[int], temperature: float
) -> dict[int, float]:
    """At one branching point: the children's log-probabilities renormalised among them,
    after dividing by `temperature` (a token the engine did not report counts as impossible)."""
    scaled = {c: logprobs.get(c, -math.inf) / temperature for c in children}
    top = max(scaled.values())
    if top == -math.inf:
        return {c: -math.log(len(children)) for c in children}
    norm = top + math.log(sum(math.exp(v - top) for v in scaled.values()))
    return {c: v - norm for c, v in scaled.items()}


@dataclass(frozen=True)
class LabelDistribution:
    """Probabilities of the labels that were scored (all of them, or the likely ones: they
    sum to at most 1), most probable first."""

    ranked: tuple[tuple[str, float], ...]

    @property
    def best(self) -> tuple[str, float]:
        return self.ranked[0]

    def top(self, k: int) -> tuple[tuple[str, float], ...]:
        return self.ranked[:k]

    def probability(self, label: str) -> float | None:
        """The label's probability; None when it was not scored (less likely than the floor)."""
        return dict(self.ranked).get(label)


@dataclass
class LabelSearch:
    """Best-first expansion of a trie for one prompt. Ask `pending()` which branching points
    need a forward pass, give each one's next-token log-probabilities (of its `children`) to
    `add`, until `pending()` is empty; then read `distribution()`."""

    trie: LabelTrie
    temperature: float = 1.0
    floor: float = DEFAULT_FLOOR
    max_expansions: int = DEFAULT_MAX_EXPANSIONS
    known: dict[LabelPrefix, Mapping[int, float]] = field(default_factory=dict)

    def add(self, prefix: LabelPrefix, logprobs: Mapping[int, float]) -> None:
        self.known[prefix] = logprobs

    def children(self, prefix: LabelPrefix) -> tuple[int, ...]:
        """The tokens whose log-probabilities a read of branching point `prefix` gives."""
        return self.trie.children(prefix)

    def pending(self) -> list[LabelPrefix]:
        """The unexpanded branching points worth a forward pass: those at least as probable
        as the floor, or as the best label scored so far when that is lower (so the most
        probable label is always found), within `max_expansions`."""
        labels, frontier = self._walk()
        if self.trie.root is None:
            return []
        best = max(labels.values(), default=0.0)
        threshold = min(self.floor, best) if labels else 0.0
        room = self.max_expansions - len(self.known)
        wanted = sorted((p for p in frontier.items() if p[1] >= threshold), key=lambda p: -p[1])
        return [prefix for prefix, _ in wanted[: max(room, 0)]]

    def distribution(self) -> LabelDistribution:
        labels, _ = self._walk()
        if self.trie.root is None:
            labels = {0: 1.0}
        ranked = sorted(labels.items(), key=lambda item: (-item[1], item[0]))
        return LabelDistribution(tuple((self.trie.labels[i], p) for i, p in ranked))

    def _walk(self) -> tuple[dict[int, float], dict[LabelPrefix, float]]:
        """The scored labels' probabilities and the unexpanded branching points' masses."""
        labels: dict[int, float] = {}
        frontier: dict[LabelPrefix, float] = {}
        root = self.trie.root
        if root is None:
            return labels, frontier
        stack: list[tuple[LabelPrefix, float]] = [(root, 0.0)]
        while stack:
            node, logmass = stack.pop()
            if node not in self.known:
                frontier[node] = math.exp(logmass)
                continue
            children = self.trie.edges[node]
            scaled = tempered(self.known[node], tuple(children), self.temperature)
            for token, edge in children.items():
                mass = logmass + scaled[token]
                if edge.label is not None:
                    labels[edge.label] = math.exp(mass)
                else:
                    assert edge.branch is not None
                    stack.append((edge.branch, mass))
        return labels, frontier
