"""Label probabilities of a classification adapter's task calls (`adapters.label_trie`).

A task whose schema is one `enum` field is answered by scoring its labels: one forward pass
per branching point of the label trie that is worth reading (best-first, a few per request
for a confident adapter), through the engine like any request, with the adapter and its
prompt. The most probable label is the answer; its calibrated probability is the confidence.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from dataclasses import dataclass

from adapters.label_trie import LabelDistribution, LabelSearch, LabelTrie
from server.catalog import ServedModel
from server.engine import Engine, Sampling

DEFAULT_TOP_LABELS = 5
MAX_TOP_LABELS = 20
CACHED_TRIES = 64
"""Tries kept, one per adapter version (least recent out)."""


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
class LabelVerdict:
    """What an answer's label is worth: its probability (None when it was not scored: less
    probable than the search's floor), the most probable labels, and whether it abstains."""

    confidence: float | None
    top_labels: tuple[tuple[str, float], ...]
    abstained: bool


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
    """Builds (and caches) label tries and scores prompts on the engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tries: OrderedDict[tuple[str, int | None, str], LabelTrie | None] = OrderedDict()

    async def trie(self, model: ServedModel, field: str, labels: list[str]) -> LabelTrie | None:
        """The trie of the version's labels (built off the event loop once per version); None
        when its labels cannot be scored (one answer's tokens begin another's)."""
        key = (model.name, model.version, field)
        if key in self._tries:
            self._tries.move_to_end(key)
            return self._tries[key]
        try:
            trie: LabelTrie | None = await asyncio.to_thread(
                LabelTrie.build, _EngineTokenizer(self._engine), field, labels
            )
        except ValueError:
            trie = None
        self._tries[key] = trie
        while len(self._tries) > CACHED_TRIES:
            self._tries.popitem(last=False)
        return trie

    async def distribution(
        self, plan: LabelPlan, model: ServedModel, prompt_ids: list[int], request_id: str
    ) -> LabelDistribution:
        """The calibrated label distribution of one prompt: rounds of forward passes, each
        round's branching points read together (the engine batches them)."""
        search = LabelSearch(plan.trie, temperature=plan.temperature)
        round_number = 0
        while nodes := search.pending():
            round_number += 1
            read = await asyncio.gather(
                *(
                    self._read(
                        model,
                        [*prompt_ids, *node],
                        plan.trie.children(node),
                        f"{request_id}-labels{round_number}-{i}",
                    )
                    for i, node in enumerate(nodes)
                )
            )
            for node, logprobs in zip(nodes, read, strict=True):
                search.add(node, logprobs)
        return search.distribution()

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
