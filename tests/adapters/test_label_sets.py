"""Label-set probabilities of multi-label tasks (adapters/label_sets.py): a made-up model over a
character tokenizer, checked against hand-computed marginals and against brute force."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence

import pytest

from adapters.json_grammar import compact_json
from adapters.label_sets import (
    LabelSetGrammar,
    LabelSetSearch,
    RoundSearch,
    SetField,
    label_set_field,
)
from adapters.label_trie import LabelSearch, LabelTrie
from tests.support.char_tokenizer import CharTokenizer


class MergingTokenizer(CharTokenizer):
    """Merges `"]}` into one token: an array that closes the object does not end in `"]`."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1000 if part == '"]}' else ord(part) for part in _split(text, '"]}')]


def _split(text: str, merged: str) -> list[str]:
    parts: list[str] = []
    for i, chunk in enumerate(text.split(merged)):
        parts.extend([merged] if i else [])
        parts.extend(chunk)
    return parts


HEAD = '{"f":'
# The made-up model: next-character probabilities after each answer prefix (hand-picked).
# Sets: [] .2, [a] .3, [a,a] .09, [a,b] .21, [b] .12, [b,a] .072, [b,b] .008 (sum 1), so
# P(a in set) = .3 + .09 + .21 + .072 = .672, P(b in set) = .21 + .12 + .072 + .008 = .41.
MODEL = {
    HEAD + "[": {"]": 0.2, '"': 0.8},
    HEAD + '["': {"a": 0.75, "b": 0.25},
    HEAD + '["a"': {",": 0.5, "]": 0.5},
    HEAD + '["b"': {",": 0.4, "]": 0.6},
    HEAD + '["a","': {"a": 0.3, "b": 0.7},
    HEAD + '["b","': {"a": 0.9, "b": 0.1},
}


def grammar(max_items: int | None = 2, labels: Sequence[str] = ("a", "b")) -> LabelSetGrammar:
    return LabelSetGrammar.build(CharTokenizer(), SetField("f", 0, max_items, None), labels)


def run(search: RoundSearch, model: Mapping[str, Mapping[str, float]]) -> list[int]:
    """Drive `search` as the server does; returns the reads of each round."""
    rounds = []
    while prefixes := search.pending():
        rounds.append(len(prefixes))
        for prefix in prefixes:
            probabilities = model["".join(map(chr, prefix))]
            search.add(
                prefix,
                {t: math.log(probabilities[chr(t)]) for t in search.children(prefix)},
            )
    return rounds


def test_marginals_are_each_labels_probability_of_being_in_the_set() -> None:
    search = LabelSetSearch(grammar())
    rounds = run(search, MODEL)
    result = search.distribution()
    assert [label for label, _ in result.ranked] == ["a", "b"]
    assert dict(result.ranked) == {"a": pytest.approx(0.672), "b": pytest.approx(0.41)}
    assert result.empty == pytest.approx(0.2)
    # Best-first: the opening, the first label, its separator-or-close, the second label.
    assert rounds == [1, 1, 2, 2] and result.passes == 6


def test_the_floor_and_the_cap_leave_lower_bounds() -> None:
    floored = LabelSetSearch(grammar(), floor=0.1)
    run(floored, MODEL)
    # After ["b", the second label (mass .08) is not read: a misses its .072 from there.
    assert floored.distribution().probability("a") == pytest.approx(0.6)
    assert floored.distribution().probability("b") == pytest.approx(0.41)
    assert floored.distribution().passes == 5
    capped = LabelSetSearch(grammar(), max_expansions=2)
    run(capped, MODEL)
    # A label counts as soon as the trie is down to it: a .8 * .75, b .8 * .25.
    assert dict(capped.distribution().ranked) == {
        "a": pytest.approx(0.6),
        "b": pytest.approx(0.2),
    }
    assert capped.distribution().passes == 2


def test_max_items_closes_the_array_and_the_temperature_flattens() -> None:
    single = LabelSetSearch(grammar(max_items=1))
    run(single, MODEL)
    result = single.distribution()
    assert dict(result.ranked) == {"a": pytest.approx(0.6), "b": pytest.approx(0.2)}
    assert result.empty + sum(p for _, p in result.ranked) == pytest.approx(1.0)
    assert result.passes == 2
    tempered = LabelSetSearch(grammar(), temperature=2.0)
    run(tempered, MODEL)
    # At temperature 2 the opening's .2 / .8 become sqrt(.2) / sqrt(.8) renormalised: 1/3.
    assert tempered.distribution().empty == pytest.approx(1 / 3)


def _brute_force(
    labels: Sequence[str], max_items: int, logprob: Mapping[tuple[str, str], float]
) -> tuple[dict[str, float], float]:
    """Every answer's probability at the character level, where each character is chosen among
    those that continue some valid answer; summed per label (once per answer) and for []."""
    answers = {
        HEAD + compact_json(list(chosen)) + "}": chosen
        for size in range(max_items + 1)
        for chosen in itertools.product(labels, repeat=size)
    }
    marginals = dict.fromkeys(labels, 0.0)
    empty = 0.0
    for text, chosen in answers.items():
        total = 0.0
        for i in range(len(HEAD), len(text)):
            allowed = {a[i] for a in answers if a[:i] == text[:i]}
            if len(allowed) > 1:
                norm = math.log(sum(math.exp(logprob[text[:i], c]) for c in allowed))
                total += logprob[text[:i], text[i]] - norm
        for label in set(chosen):
            marginals[label] += math.exp(total)
        empty += math.exp(total) if not chosen else 0.0
    return marginals, empty


def test_a_full_search_matches_brute_force_with_labels_that_begin_others() -> None:
    labels = ["pin", "pin_now", "card"]
    rng = random.Random(7)
    logprob: dict[tuple[str, str], float] = {}

    class Model(dict[str, Mapping[str, float]]):
        def __missing__(self, prefix: str) -> Mapping[str, float]:
            return Probabilities(prefix)

    class Probabilities(dict[str, float]):
        def __init__(self, prefix: str) -> None:
            super().__init__()
            self.prefix = prefix

        def __missing__(self, char: str) -> float:
            key = (self.prefix, char)
            logprob.setdefault(key, rng.uniform(-4.0, 0.0))
            return math.exp(logprob[key])

    search = LabelSetSearch(grammar(max_items=3, labels=labels), floor=0.0, max_expansions=10**6)
    run(search, Model())
    expected, empty = _brute_force(labels, 3, logprob)
    result = search.distribution()
    assert dict(result.ranked) == {label: pytest.approx(p) for label, p in expected.items()}
    assert result.empty == pytest.approx(empty)


def test_the_single_label_search_is_driven_the_same_way() -> None:
    trie = LabelTrie.build(CharTokenizer(), "f", ["a", "b"])
    search: RoundSearch = LabelSearch(trie)
    assert search.children(search.pending()[0]) == (ord("a"), ord("b"))


def test_pieces_that_merge_with_what_follows_are_not_scored() -> None:
    field = SetField("f", 0, 2, None)
    with pytest.raises(ValueError, match="does not encode as its pieces"):
        LabelSetGrammar.build(MergingTokenizer(), field, ["a", "b"])
    # Followed by another field the array ends in `"],` and the same tokenizer is fine.
    LabelSetGrammar.build(MergingTokenizer(), SetField("f", 0, 2, "g"), ["a", "b"])


INTENTS = {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 6}
PROPERTIES = {"intents": INTENTS, "slots": {"type": "object"}}
NLUPP_LIKE = {
    "type": "object",
    "properties": PROPERTIES,
    "required": ["intents", "slots"],
    "additionalProperties": False,
}


def test_the_set_field_is_the_first_required_array_of_the_labels() -> None:
    assert label_set_field(NLUPP_LIKE, ["a", "b"]) == SetField("intents", 0, 6, "slots")
    assert label_set_field(NLUPP_LIKE, ["b", "a"]) is None
    reordered = {**NLUPP_LIKE, "properties": dict(reversed(PROPERTIES.items()))}
    assert label_set_field(reordered, ["a", "b"]) is None
    optional = {**NLUPP_LIKE, "required": ["slots"]}
    assert label_set_field(optional, ["a", "b"]) is None
    unique = {**NLUPP_LIKE, "properties": {"intents": {**INTENTS, "uniqueItems": True}}}
    assert label_set_field(unique, ["a", "b"]) is None
    two = {**NLUPP_LIKE, "properties": {"intents": INTENTS, "more": INTENTS}}
    assert label_set_field(two, ["a", "b"]) is None
    single = {"type": "object", "properties": {"intent": {"enum": ["a", "b"]}}}
    assert label_set_field(single, ["a", "b"]) is None
