"""Shortest completions of an outlines token index: how many tokens each state needs to end.

The index (`outlines_core.Index`) is the automaton the engine decodes with: its states, and
per state the tokens it allows and where each leads. `ShortestCompletions.build(index)` walks
it backwards from the final states (one breadth-first search over the distinct successor
states) and stores, per state, its allowed tokens sorted by the distance of the state they
lead to. Two things come out of it:

- `min_tokens`: the fewest tokens a complete document takes, end-of-sequence included: a
  request's `max_tokens` below it cannot be answered;
- `allowed(state, remaining)`: with `remaining` tokens left (this one included), the tokens
  after which the document can still be completed and closed with end-of-sequence in time;
  None when the budget restricts nothing. Decoding that keeps to these tokens ends every
  document validly within any `max_tokens >= min_tokens` (`engine_extension`).

Memory: about 6 bytes per transition (an int32 token id and an int16 distance), built once
per grammar; building it reads every transition (`Index.get_transitions`), about as long as
compiling the index took.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

UNREACHABLE = np.iinfo(np.int32).max


@dataclass(frozen=True)
class StateTokens:
    """One state's allowed tokens, sorted by the distance to a final state after them."""

    tokens: npt.NDArray[np.int32]
    distances: npt.NDArray[np.int32]


@dataclass(frozen=True)
class ShortestCompletions:
    """Per state of a token index, the tokens that keep a document completable in time."""

    initial_state: int
    distance: dict[int, int]
    """Tokens from each state to a final state (end-of-sequence not counted)."""
    states: dict[int, StateTokens]

    @classmethod
    def build(cls, index: Any) -> ShortestCompletions:
        """Read `index`'s transitions once; `index` is an `outlines_core.Index`."""
        transitions: dict[int, dict[int, int]] = index.get_transitions()
        finals = set(index.get_final_states())
        predecessors: dict[int, set[int]] = {}
        for state, moves in transitions.items():
            for successor in set(moves.values()):
                predecessors.setdefault(successor, set()).add(state)
        distance = dict.fromkeys(finals, 0)
        queue = deque(finals)
        while queue:
            state = queue.popleft()
            for previous in predecessors.get(state, ()):
                if previous not in distance:
                    distance[previous] = distance[state] + 1
                    queue.append(previous)
        known = [*transitions, *distance]
        steps_of = np.full(max(known, default=0) + 1, UNREACHABLE, dtype=np.int32)
        steps_of[list(distance)] = list(distance.values())
        states: dict[int, StateTokens] = {}
        for state, moves in transitions.items():
            tokens = np.fromiter(moves.keys(), dtype=np.int32, count=len(moves))
            steps = steps_of[np.fromiter(moves.values(), dtype=np.int64, count=len(moves))]
            order = np.argsort(steps, kind="stable")
            states[state] = StateTokens(tokens[order], steps[order])
        return cls(index.get_initial_state(), distance, states)

    @property
    def min_tokens(self) -> int | None:
        """Fewest tokens of a complete document plus end-of-sequence (None: none completes)."""
        steps = self.distance.get(self.initial_state)
        return None if steps is None else steps + 1

    @property
    def nbytes(self) -> int:
        return sum(s.tokens.nbytes + s.distances.nbytes for s in self.states.values())

    def allowed(self, state: int, remaining: int) -> npt.NDArray[np.int32] | None:
        """Tokens allowed in `state` with `remaining` tokens left, this one included, so that
        the document can still be finished and closed by end-of-sequence; None when every
        token the grammar allows qualifies. End-of-sequence itself is not listed (the
        grammar allows it in final states, and it always fits)."""
        entry = self.states.get(state)
        if entry is None:  # a final state without successors: only end-of-sequence
            return None
        slack = remaining - 2  # after this token: the rest of the document, then the end
        if entry.distances.size == 0 or entry.distances[-1] <= slack:
            return None
        cut = int(np.searchsorted(entry.distances, slack, side="right"))
        return entry.tokens[:cut]


def token_mask(tokens: npt.NDArray[np.int32], words: int) -> npt.NDArray[np.int32]:
    """A vLLM-style bitmask (`words` int32 words, bit i of word w = token 32*w + i) of
    `tokens`."""
    bits = np.zeros(words * 32, dtype=np.bool_)
    bits[tokens] = True
    return np.packbits(bits, bitorder="little").view("<i4")
