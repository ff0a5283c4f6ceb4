"""The label trie and its best-first search (adapters/label_trie.py), on a byte tokenizer."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from adapters.label_trie import (
    LabelSearch,
    LabelTrie,
    classification_field,
    label_answer,
)

LABELS = ["card_arrival", "card_linking", "cash", "pin", "pin_blocked_now"]


class ByteTokenizer:
    """One token per byte: labels share their common prefixes token for token."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())


def trie() -> LabelTrie:
    return LabelTrie.build(ByteTokenizer(), "intent", LABELS)


def model_logprobs(seed: int, tree: LabelTrie) -> dict[tuple[int, ...], dict[int, float]]:
    """A made-up model: random next-token log-probabilities at every branching point, with
    some mass left to tokens outside the trie (so renormalisation matters)."""
    rng = random.Random(seed)
    known = {}
    for node in tree.branching_points:
        raw = {token: rng.uniform(-6.0, 0.0) for token in tree.children(node)}
        known[node] = {token: value - 1.0 for token, value in raw.items()}
    return known


def test_the_trie_parts_where_the_answers_part() -> None:
    tree = trie()
    answers = [label_answer("intent", label).encode() for label in LABELS]
    assert tree.sequences == tuple(tuple(a) for a in answers)
    common = len(b'{"intent":"')
    assert tree.root == tuple(answers[0][:common])
    # card_ / cash at "ca"; card_arrival / card_linking after "card_"; pin" / pin_ after "pin".
    assert len(tree.branching_points) == 4


def test_full_expansion_gives_a_distribution_over_every_label() -> None:
    tree = trie()
    known = model_logprobs(0, tree)
    search = LabelSearch(tree, floor=0.0)
    for node in tree.branching_points:
        search.add(node, known[node])
    assert search.pending() == []
    distribution = search.distribution()
    assert sorted(label for label, _ in distribution.ranked) == sorted(LABELS)
    assert sum(p for _, p in distribution.ranked) == pytest.approx(1.0)
    for index, label in enumerate(LABELS):
        assert distribution.probability(label) == pytest.approx(
            math.exp(tree.label_logprob(known, index, 1.0))
        )


def test_the_search_finds_the_most_probable_label_with_fewer_passes() -> None:
    tree = trie()
    for seed in range(30):
        known = model_logprobs(seed, tree)
        exact = LabelSearch(tree, floor=0.0, known=dict(known)).distribution()
        search = LabelSearch(tree, floor=0.2)
        rounds = 0
        while nodes := search.pending():
            rounds += 1
            for node in nodes:
                search.add(node, known[node])
        found = search.distribution()
        assert found.best[0] == exact.best[0]
        assert found.best[1] == pytest.approx(exact.best[1])
        assert sum(p for _, p in found.ranked) <= 1 + 1e-9
        assert rounds <= 3 and len(search.known) <= len(tree.branching_points)


def test_temperature_flattens_each_branching_point() -> None:
    tree = trie()
    known = model_logprobs(1, tree)
    cold = LabelSearch(tree, floor=0.0, known=dict(known)).distribution()
    hot = LabelSearch(tree, temperature=4.0, floor=0.0, known=dict(known)).distribution()
    assert hot.best[1] < cold.best[1]
    assert sum(p for _, p in hot.ranked) == pytest.approx(1.0)
    cool = LabelSearch(tree, temperature=0.25, floor=0.0, known=dict(known)).distribution()
    assert cool.best[1] > cold.best[1]


def test_max_expansions_bounds_the_forward_passes() -> None:
    tree = trie()
    known = model_logprobs(2, tree)
    search = LabelSearch(tree, floor=0.0, max_expansions=2)
    asked = 0
    while nodes := search.pending():
        asked += len(nodes)
        for node in nodes:
            search.add(node, known[node])
    assert asked == 2
    assert sum(p for _, p in search.distribution().ranked) < 1


def test_one_label_needs_no_pass_and_prefix_labels_are_refused() -> None:
    single = LabelTrie.build(ByteTokenizer(), "intent", ["only"])
    search = LabelSearch(single)
    assert search.pending() == []
    assert search.distribution().best == ("only", 1.0)

    class Unclosed(ByteTokenizer):
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return super().encode(text.removesuffix('"}'))

    with pytest.raises(ValueError, match="begin another"):
        LabelTrie.build(Unclosed(), "intent", ["pin", "pin_blocked"])


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (
            {"type": "object", "properties": {"intent": {"enum": LABELS}}, "required": ["intent"]},
            "intent",
        ),
        ({"type": "object", "properties": {"intent": {"enum": LABELS}}}, None),
        (
            {
                "type": "object",
                "properties": {"intent": {"enum": LABELS}, "note": {"type": "string"}},
                "required": ["intent"],
            },
            None,
        ),
        (
            {
                "type": "object",
                "properties": {"intent": {"enum": LABELS[:2]}},
                "required": ["intent"],
            },
            None,
        ),
        (None, None),
    ],
)
def test_only_single_enum_schemas_are_scored(schema: dict | None, expected: str | None) -> None:
    assert classification_field(schema, LABELS) == expected


def test_every_label_order_builds_the_same_distribution() -> None:
    tree = trie()
    known = model_logprobs(3, tree)
    reference = dict(LabelSearch(tree, floor=0.0, known=dict(known)).distribution().ranked)
    for order in itertools.islice(itertools.permutations(LABELS), 5):
        other = LabelTrie.build(ByteTokenizer(), "intent", list(order))
        got = dict(LabelSearch(other, floor=0.0, known=dict(known)).distribution().ranked)
        assert got == pytest.approx(reference)
