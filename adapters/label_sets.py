"""Label probabilities of a multi-label task: for each label, the probability that the answer's
set of labels holds it, from the model's next-token distributions.

A multi-label task's answer begins `{"<field>":[...]` (compact JSON, as training wrote it; the
array's items are labels, other fields follow and stay generated). Its array is written as
pieces: `[]` (empty) or `["`, then labels separated by `","` and closed by `"]`. A search state
is the labels chosen so far; from it, the next item is a label followed by the separator or the
closing (an "item"); the very first is the empty array or the opening followed by an item. The
items' token sequences form a trie (`adapters.label_trie.LabelTrie`), read at its branching
points only, so one forward pass per branching point decides between labels, and between
separating and closing. A label's probability P(l in set) is the sum, over the states that do
not hold it yet, of the probability of reaching the state and choosing `l` next: its first
occurrence (a repeated label counts once). That is known as soon as the trie's subtree is down
to that one label, before the separator-or-close decision is read.

`LabelSetSearch` expands states best-first: a point less probable than the floor is not read,
and at most `max_expansions` are. So the probabilities are lower bounds (each misses at most
the mass of the unread points), and the labels never reached are unscored. Temperature scaling
divides the log-probabilities at every branching point (the manifest's calibration
temperature), as for single-label tasks. The pieces' token ids come from the tokenizer and are
checked against whole answers: a tokenizer that merges them differently cannot be scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.json_grammar import compact_json
from adapters.label_trie import (
    DEFAULT_FLOOR,
    DEFAULT_MAX_EXPANSIONS,
    LabelPrefix,
    LabelTrie,
    Tokenizer,
    tempered,
)

OPENING, EMPTY, SEPARATOR, CLOSING = '["', "[]", '","', '"]'
"""The array's pieces in compact JSON."""


class RoundSearch(Protocol):
    """A search driven in rounds of forward passes (`LabelSearch`, `LabelSetSearch`): each
    round reads every prefix `pending()` names (token ids after the prompt), giving `add` the
    log-probabilities of `children(prefix)` as the next token, until `pending()` is empty."""

    def pending(self) -> list[LabelPrefix]: ...

    def children(self, prefix: LabelPrefix) -> tuple[int, ...]: ...

    def add(self, prefix: LabelPrefix, logprobs: Mapping[int, float]) -> None: ...


@dataclass(frozen=True)
class SetField:
    """The array field of a multi-label task's schema, and what follows it in the answer."""

    name: str
    min_items: int
    max_items: int | None
    following: str | None
    """The next property (None: the array closes the object)."""


def label_set_field(
    schema: Mapping[str, Any] | None, labels: Sequence[str] | None
) -> SetField | None:
    """The field of a multi-label task: the schema's one array whose items are an `enum` equal
    to `labels`, its first property and a required one (so the answer begins with it), without
    `uniqueItems`. None when the schema is anything else (its labels are not scored)."""
    if not schema or not labels or schema.get("type") != "object":
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return None
    arrays = [name for name, spec in properties.items() if _enum_items(spec) is not None]
    if len(arrays) != 1:
        return None
    (name,) = arrays
    spec = properties[name]
    names = list(properties)
    min_items, max_items = spec.get("minItems", 0), spec.get("maxItems")
    if (
        names[0] != name
        or name not in (schema.get("required") or [])
        or _enum_items(spec) != list(labels)
        or spec.get("uniqueItems")
        or not isinstance(min_items, int)
        or not (
            max_items is None or (isinstance(max_items, int) and max(1, min_items) <= max_items)
        )
    ):
        return None
    return SetField(str(name), min_items, max_items, names[1] if len(names) > 1 else None)


def _enum_items(spec: object) -> list[Any] | None:
    """The enum of an array-of-enum property; None for any other property."""
    if not isinstance(spec, dict) or spec.get("type") != "array":
        return None
    items = spec.get("items")
    if not isinstance(items, dict) or not isinstance(items.get("enum"), list):
        return None
    return list(items["enum"])


@dataclass(frozen=True)
class Item:
    """A leaf of an item trie: a label and whether the array closes after it (or, with
    `label` None, the empty array)."""

    label: int | None
    closes: bool


@dataclass(frozen=True)
class ItemTrie:
    """The items allowed after some number of labels, as a trie, and for each branching point
    whose subtree holds one label only, that label."""

    trie: LabelTrie
    items: tuple[Item, ...]
    sole_label: Mapping[LabelPrefix, int]

    @classmethod
    def build(cls, items: Sequence[Item], sequences: Sequence[LabelPrefix]) -> ItemTrie:
        trie = LabelTrie.from_sequences([str(item) for item in items], sequences)
        sole = {}
        for node in trie.edges:
            under = {
                i.label for i, s in zip(items, sequences, strict=True) if s[: len(node)] == node
            }
            if len(under) == 1 and (label := next(iter(under))) is not None:
                sole[node] = label
        return cls(trie, tuple(items), sole)


@dataclass(frozen=True)
class LabelSetGrammar:
    """The token ids of a multi-label task's answers: `{"<field>":` (`prefix`), then items
    from `tries[first, may_continue, may_close]`."""

    labels: tuple[str, ...]
    field: SetField
    prefix: LabelPrefix
    tries: Mapping[tuple[bool, bool, bool], ItemTrie]

    @classmethod
    def build(cls, tokenizer: Tokenizer, spec: SetField, labels: Sequence[str]) -> LabelSetGrammar:
        """The pieces' token ids as `tokenizer` encodes them. Raises ValueError when whole
        answers (every label first and second of two, and alone) do not encode as their pieces
        do, or when one item's tokens begin another's."""

        def encode(text: str) -> LabelPrefix:
            return tuple(tokenizer.encode(text, add_special_tokens=False))

        head = "{" + compact_json(spec.name) + ":"
        tail = "}" if spec.following is None else "," + compact_json(spec.following) + ":"
        prefix, opening, empty = encode(head), encode(OPENING), encode(EMPTY)
        separator, closing = encode(SEPARATOR), encode(CLOSING)
        words = []
        for label in labels:
            whole = encode(head + OPENING + compact_json(label)[1:-1])
            start = len(prefix) + len(opening)
            if whole[:start] != prefix + opening or len(whole) == start:
                raise ValueError(f"the answers of label {label!r} do not begin as its pieces")
            words.append(whole[start:])
        checks: list[tuple[tuple[int, ...], LabelPrefix]] = [((), prefix + empty)]
        for i, word in enumerate(words):
            j = (i + 1) % len(words)
            checks.append(((i,), prefix + opening + word + closing))
            checks.append(((i, j), prefix + opening + word + separator + words[j] + closing))
        for chosen, pieces in checks:
            answer = head + compact_json([labels[i] for i in chosen]) + tail
            if encode(answer)[: len(pieces)] != pieces:
                raise ValueError(f"{answer!r} does not encode as its pieces: labels not scored")
        tries = {}
        for first, may_continue, may_close in _trie_kinds(spec):
            items, sequences = [], []
            if first and spec.min_items == 0:
                items.append(Item(None, closes=True))
                sequences.append(empty)
            lead = opening if first else ()
            for end, allowed in ((separator, may_continue), (closing, may_close)):
                for i, word in enumerate(words):
                    if allowed:
                        items.append(Item(i, closes=end == closing))
                        sequences.append(lead + word + end)
            tries[first, may_continue, may_close] = ItemTrie.build(items, sequences)
        return cls(tuple(labels), spec, prefix, tries)

    def item_trie(self, chosen: int) -> ItemTrie:
        """The items allowed after `chosen` labels."""
        return self.tries[_kind(self.field, chosen)]


def _kind(spec: SetField, chosen: int) -> tuple[bool, bool, bool]:
    """Whether the item after `chosen` labels is the first, may be followed by another, may
    close the array."""
    number = chosen + 1
    return (
        chosen == 0,
        spec.max_items is None or number < spec.max_items,
        number >= spec.min_items,
    )


def _trie_kinds(spec: SetField) -> set[tuple[bool, bool, bool]]:
    last = max(spec.min_items, 1) if spec.max_items is None else spec.max_items - 1
    return {_kind(spec, chosen) for chosen in range(last + 1)}


@dataclass(frozen=True)
class LabelSetDistribution:
    """Each scored label's probability of being in the answer's set, most probable first (they
    do not sum to 1), the probability of the empty set, and the forward passes it took."""

    ranked: tuple[tuple[str, float], ...]
    empty: float
    passes: int

    def top(self, k: int) -> tuple[tuple[str, float], ...]:
        return self.ranked[:k]

    def probability(self, label: str) -> float | None:
        """The label's probability; None when it was not scored (never reached)."""
        return dict(self.ranked).get(label)


@dataclass
class _Walk:
    """What the reads so far tell: first-occurrence masses per label, the empty set's mass,
    and the unread points' masses."""

    labels: dict[int, float] = field(default_factory=dict)
    empty: float = 0.0
    frontier: dict[LabelPrefix, float] = field(default_factory=dict)


@dataclass
class LabelSetSearch:
    """Best-first expansion of the label sets of one prompt (a `RoundSearch`); then read
    `distribution()`."""

    grammar: LabelSetGrammar
    temperature: float = 1.0
    floor: float = DEFAULT_FLOOR
    max_expansions: int = DEFAULT_MAX_EXPANSIONS
    known: dict[LabelPrefix, Mapping[int, float]] = field(default_factory=dict)
    _children: dict[LabelPrefix, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def add(self, prefix: LabelPrefix, logprobs: Mapping[int, float]) -> None:
        self.known[prefix] = logprobs

    def children(self, prefix: LabelPrefix) -> tuple[int, ...]:
        """The tokens a read of `prefix` (a point `pending()` named) decides between."""
        return self._children[prefix]

    def pending(self) -> list[LabelPrefix]:
        """The unread points at least as probable as the floor, most probable first, within
        `max_expansions`."""
        room = max(self.max_expansions - len(self.known), 0)
        wanted = [p for p in self._walk().frontier.items() if p[1] >= self.floor]
        return [prefix for prefix, _ in sorted(wanted, key=lambda p: -p[1])[:room]]

    def distribution(self) -> LabelSetDistribution:
        walk = self._walk()
        ranked = sorted(walk.labels.items(), key=lambda item: (-item[1], item[0]))
        return LabelSetDistribution(
            tuple((self.grammar.labels[i], p) for i, p in ranked), walk.empty, len(self.known)
        )

    def _walk(self) -> _Walk:
        walk = _Walk()
        # (labels chosen, their tokens after the prompt, log-probability of reaching them)
        states: list[tuple[tuple[int, ...], LabelPrefix, float]] = [((), self.grammar.prefix, 0.0)]
        while states:
            chosen, base, logmass = states.pop()
            items = self.grammar.item_trie(len(chosen))
            trie = items.trie
            # (trie node or leaf, log-mass, whether its label was counted above it)
            nodes: list[tuple[LabelPrefix | int, float, bool]] = [
                (trie.root if trie.root is not None else 0, logmass, False)
            ]
            while nodes:
                node, mass, counted = nodes.pop()
                if isinstance(node, int):  # a leaf: item number `node`
                    item = items.items[node]
                    if item.label is None:
                        walk.empty += math.exp(mass)
                        continue
                    if not counted and item.label not in chosen:
                        walk.labels[item.label] = walk.labels.get(item.label, 0.0) + math.exp(mass)
                    if not item.closes and mass > -math.inf:
                        states.append(((*chosen, item.label), base + trie.sequences[node], mass))
                    continue
                sole = items.sole_label.get(node)
                if sole is not None and not counted and sole not in chosen:
                    walk.labels[sole] = walk.labels.get(sole, 0.0) + math.exp(mass)
                counted = counted or sole is not None
                key = base + node
                if key not in self.known:
                    walk.frontier[key] = math.exp(mass)
                    self._children[key] = trie.children(node)
                    continue
                scaled = tempered(self.known[key], trie.children(node), self.temperature)
                for token, edge in trie.edges[node].items():
                    below = edge.branch if edge.branch is not None else edge.label
                    assert below is not None
                    nodes.append((below, mass + scaled[token], counted))
        return walk
