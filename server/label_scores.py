"""Label probabilities of a classification adapter's task calls (`adapters.label_trie`).

A task whose schema is one `enum` field is answered by scoring its labels: one forward pass
per branching point of the label trie that is worth reading (best-first, a few per request
for a confident adapter), through the engine like any request, with the adapter and its
prompt. The most probable label is the answer; its calibrated probability is the confidence.

A multi-label task (`adapters.label_sets`: one array of the labels in its schema) is answered
by generation as usual; beside it, the same kind of rounds give each label's probability of
being in the answer's set.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from adapters.label_sets import (
    LabelSetGrammar,
    LabelSetSearch,
    RoundSearch,
    SetField,
)
from adapters.label_trie import LabelDistribution, LabelSearch, LabelTrie
from server.catalog import ServedModel
from server.engine import Engine, Sampling

DEFAULT_TOP_LABELS = 5
MAX_TOP_LABELS = 20
CACHED_TRIES = 64
"""Tries (and label-set grammars) kept, one per adapter version (least recent out)."""

logger = logging.getLogger(__name__)
Built = TypeVar("Built")


@dataclass(frozen=True)
class LabelPlan:
    """How a task call's labels are scored and read."""

    trie: LabelTrie
    field: str
    temperature: float
    abstain_below: float | None
    top_k: int
    answer_directly: bool
    """The most probable label is the answer (greedy, one choice, no token log-probabilities,
    the whole budget); otherwise choices are generated and each is given its label's
    probability."""


@dataclass(frozen=True)
class LabelSetPlan:
    """How a multi-label task call's label probabilities are read: beside its generation."""

    grammar: LabelSetGrammar
    temperature: float
    top_k: int


@dataclass(frozen=True)
class LabelVerdict:
    """What an answer's label is worth: its probability (None when it was not scored: less
    probable than the search's floor), the most probable labels, and whether it abstains."""

    confidence: float | None
    top_labels: tuple[tuple[str, float], ...]
    abstained: bool


@dataclass(frozen=True)
class LabelSetVerdict:
    """What a multi-label task's answer set is worth: the labels most probably in it, each
    with that probability (they do not sum to 1), most probable first, and the probability
    that the set is empty (0 when the schema requires an item). Both are lower bounds: the
    search leaves the mass of its unread points out."""

    probabilities: tuple[tuple[str, float], ...]
    empty: float


def verdict(plan: LabelPlan, distribution: LabelDistribution, label: object) -> LabelVerdict:
    """The verdict on an answer whose label is `label` (None or not a label: unscored)."""
    confidence = distribution.probability(label) if isinstance(label, str) else None
    threshold = plan.abstain_below
    abstained = threshold is not None and (confidence is None or confidence < threshold)
    return LabelVerdict(confidence, distribution.top(plan.top_k), abstained)


class _EngineTokenizer:
    """The engine's tokenizer in the shape `LabelTrie.build` reads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._engine.tokenize(text)


class LabelScorer:
    """Builds (and caches) label tries and label-set grammars and scores prompts on the
    engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tries: OrderedDict[tuple[str, int | None, str], LabelTrie | None] = OrderedDict()
        self._grammars: OrderedDict[tuple[str, int | None, str], LabelSetGrammar | None] = (
            OrderedDict()
        )

    async def trie(self, model: ServedModel, field: str, labels: list[str]) -> LabelTrie | None:
        """The trie of the version's labels (built off the event loop once per version); None
        when its labels cannot be scored (one answer's tokens begin another's)."""
        tokenizer = _EngineTokenizer(self._engine)
        return await _cached(
            self._tries,
            (model.name, model.version, field),
            lambda: LabelTrie.build(tokenizer, field, labels),
        )

    async def grammar(
        self, model: ServedModel, field: SetField, labels: list[str]
    ) -> LabelSetGrammar | None:
        """The label-set grammar of a multi-label version (built once per version); None when
        the tokenizer does not write its answers as their pieces."""
        tokenizer = _EngineTokenizer(self._engine)
        return await _cached(
            self._grammars,
            (model.name, model.version, field.name),
            lambda: LabelSetGrammar.build(tokenizer, field, labels),
        )

    async def distribution(
        self, plan: LabelPlan, model: ServedModel, prompt_ids: list[int], request_id: str
    ) -> LabelDistribution:
        """The calibrated label distribution of one prompt."""
        search = LabelSearch(plan.trie, temperature=plan.temperature)
        await self._expand(search, model, prompt_ids, f"{request_id}-labels")
        return search.distribution()

    async def label_sets(
        self, plan: LabelSetPlan, model: ServedModel, prompt_ids: list[int], request_id: str
    ) -> LabelSetVerdict:
        """The `top_k` labels' calibrated probabilities of being in the answer's set, and the
        empty set's, for one prompt."""
        search = LabelSetSearch(plan.grammar, temperature=plan.temperature)
        rounds = await self._expand(search, model, prompt_ids, f"{request_id}-sets")
        distribution = search.distribution()
        logger.debug(
            "Label sets of %s@%s: %d forward passes in %d rounds",
            model.name,
            model.version,
            distribution.passes,
            rounds,
        )
        return LabelSetVerdict(distribution.top(plan.top_k), distribution.empty)

    async def _expand(
        self, search: RoundSearch, model: ServedModel, prompt_ids: list[int], request_id: str
    ) -> int:
        """Rounds of forward passes until `search` needs none, each round's prefixes read
        together (the engine batches them); returns the number of rounds."""
        round_number = 0
        while prefixes := search.pending():
            round_number += 1
            read = await asyncio.gather(
                *(
                    self._read(
                        model,
                        [*prompt_ids, *prefix],
                        search.children(prefix),
                        f"{request_id}{round_number}-{i}",
                    )
                    for i, prefix in enumerate(prefixes)
                )
            )
            for prefix, logprobs in zip(prefixes, read, strict=True):
                search.add(prefix, logprobs)
        return round_number

    async def _read(
        self, model: ServedModel, prompt_ids: list[int], children: tuple[int, ...], request_id: str
    ) -> dict[int, float]:
        """The log-probabilities of `children` as the token after `prompt_ids`."""
        sampling = Sampling(max_tokens=1, temperature=0.0, scored_token_ids=children)
        scores: dict[int, float] = {}
        async for chunk in self._engine.generate(prompt_ids, sampling, request_id, model.lora):
            for position in chunk.scores[:1]:
                scores.update(position)
        return {token: scores.get(token, -math.inf) for token in children}


async def _cached(
    cache: OrderedDict[tuple[str, int | None, str], Built | None],
    key: tuple[str, int | None, str],
    build: Callable[[], Built],
) -> Built | None:
    """`cache[key]`, else `build()` run off the event loop (None when it raises ValueError)
    and kept, the least recent entry out past `CACHED_TRIES`."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    try:
        built: Built | None = await asyncio.to_thread(build)
    except ValueError:
        built = None
    cache[key] = built
    while len(cache) > CACHED_TRIES:
        cache.popitem(last=False)
    return built
