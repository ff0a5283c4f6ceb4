"""Shortest completions of a token index: the minimum is exact and keeping to `allowed` ends
every document in time, whatever the budget at or above the minimum (small hand-made
vocabulary, real outlines_core)."""

from __future__ import annotations

import numpy as np
import outlines_core
import pytest

from server.structured.completions import ShortestCompletions, token_mask

EOS = 0
PIECES = [b"{", b"}", b'"', b"a", b"b", b"ab", b'{"', b'"}', b'{"a"}', b"aaaa", b":", b"1"]
VOCABULARY = outlines_core.Vocabulary(EOS, {piece: [i + 1] for i, piece in enumerate(PIECES)})
TOKEN = {i + 1: piece for i, piece in enumerate(PIECES)}
REGEXES = [
    r'\{"[ab]{0,12}"\}',  # shortest {""} = 2 tokens ({", "}), longest 15 bytes
    r'\{"a{2,9}"\}:1',
    r"(ab|b){1,6}",
]


def walk(table: ShortestCompletions, index: outlines_core.Index, budget: int) -> bytes:
    """Decode adversarially: always the allowed token that leads furthest from the end."""
    state, text, used = index.get_initial_state(), b"", 0
    while True:
        remaining = budget - used
        grammar = set(index.get_allowed_tokens(state) or ()) - {EOS}
        allowed = table.allowed(state, remaining)
        options = grammar if allowed is None else grammar & set(allowed.tolist())
        if not options:
            break
        token = max(options, key=lambda t: table.distance[index.get_next_state(state, t)])
        if index.is_final_state(state) and remaining <= 1:
            break
        state, text, used = index.get_next_state(state, token), text + TOKEN[token], used + 1
        assert used < budget, "the end-of-sequence token no longer fits"
    assert index.is_final_state(state), text
    return text


@pytest.mark.parametrize("regex", REGEXES)
def test_keeping_to_allowed_ends_the_document_within_any_budget_from_the_minimum(
    regex: str,
) -> None:
    index = outlines_core.Index(regex, VOCABULARY)
    table = ShortestCompletions.build(index)
    assert table.min_tokens is not None
    for budget in range(table.min_tokens, table.min_tokens + 20):
        walk(table, index, budget)


def test_the_minimum_counts_the_fewest_tokens_and_the_end() -> None:
    table = ShortestCompletions.build(outlines_core.Index(REGEXES[0], VOCABULARY))
    assert table.min_tokens == 2  # the single token `{"a"}`, then end-of-sequence


def test_a_budget_with_room_restricts_nothing() -> None:
    index = outlines_core.Index(REGEXES[0], VOCABULARY)
    table = ShortestCompletions.build(index)
    assert table.allowed(index.get_initial_state(), 100) is None


def test_the_mask_sets_exactly_the_listed_tokens() -> None:
    mask = token_mask(np.array([0, 31, 32, 70], dtype=np.int32), 3)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    assert np.flatnonzero(bits).tolist() == [0, 31, 32, 70]
