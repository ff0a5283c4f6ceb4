"""The engine-core half of `engine_extension` (read its docstring for the design): budget-aware
outlines grammars and the fallback grammar engines, chosen per request.

Imported only in processes that run vLLM's structured-output manager (the engine core).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import torch
from vllm.v1.structured_output.backend_guidance import GuidanceBackend
from vllm.v1.structured_output.backend_outlines import OutlinesBackend, OutlinesGrammar
from vllm.v1.structured_output.backend_types import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
    StructuredOutputOptions,
)
from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

from server.structured.completions import ShortestCompletions, token_mask
from server.structured.engine_extension import requested
from server.structured.engine_grammar_cache import BytesBoundedCache, cache_megabytes

CreateGrammar = Callable[[Any, Any], StructuredOutputGrammar]
_FALLBACKS: dict[str, type[StructuredOutputBackend]] = {
    "guidance": GuidanceBackend,
    "xgrammar": XgrammarBackend,
}


class BudgetedGrammar(StructuredOutputGrammar):
    """An outlines grammar whose mask also keeps the document completable in the tokens left."""

    def __init__(
        self, inner: OutlinesGrammar, completions: ShortestCompletions, max_tokens: int
    ) -> None:
        self.inner = inner
        self.completions = completions
        self.max_tokens = max_tokens

    @property
    def num_processed_tokens(self) -> int:
        return self.inner.num_processed_tokens

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        return self.inner.accept_tokens(request_id, tokens)

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        return self.inner.validate_tokens(tokens)

    def rollback(self, num_tokens: int) -> None:
        self.inner.rollback(num_tokens)

    def is_terminated(self) -> bool:
        return self.inner.is_terminated()

    def reset(self) -> None:
        self.inner.reset()

    def fill_bitmask(self, bitmask: torch.Tensor, batch_index: int) -> None:
        self.inner.fill_bitmask(bitmask, batch_index)
        remaining = self.max_tokens - self.inner.num_processed_tokens
        allowed = self.completions.allowed(self.inner.guide.get_state(), remaining)
        if allowed is None:
            return
        row = bitmask[batch_index]
        mask = torch.from_numpy(token_mask(allowed, row.numel()))
        eos = self.inner.eos_token_id
        mask[eos // 32] |= _bit(eos % 32)  # the grammar's own mask decides on the end
        row &= mask


def _bit(position: int) -> int:
    """Bit `position` of an int32 word, as the signed value torch stores."""
    value = 1 << position
    return value - (1 << 32) if position == 31 else value


class CompletionTables:
    """Shortest-completion tables of the grammars in use, an LRU bounded by their bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._tables = BytesBoundedCache[ShortestCompletions](
            max_bytes, lambda table: max(table.nbytes, 1), "completion table"
        )
        self._lock = threading.Lock()  # grammars compile in several threads

    def get(self, key: str, index: Any) -> ShortestCompletions:
        with self._lock:
            table = self._tables.get(key)
        if table is not None:
            return table
        table = ShortestCompletions.build(index)
        with self._lock:
            self._tables[key] = table  # one larger than the cache serves this request only
        return table


class FallbackBackends:
    """The fallback engines' backends, built on first use beside the manager's own."""

    def __init__(self) -> None:
        self._backends: dict[str, StructuredOutputBackend] = {}
        self._lock = threading.Lock()

    def get(self, manager: Any, engine: str) -> StructuredOutputBackend:
        with self._lock:
            backend = self._backends.get(engine)
            if backend is None:
                backend = _FALLBACKS[engine](
                    manager.vllm_config,
                    tokenizer=manager.tokenizer,
                    vocab_size=manager.vllm_config.model_config.get_vocab_size(),
                )
                # compact JSON, as outlines decodes it (vLLM's engine-wide switch is refused
                # beside the outlines backend)
                backend.disable_any_whitespace = True
                self._backends[engine] = backend
            return backend


def extended_create_grammar(create: CreateGrammar) -> CreateGrammar:
    """`StructuredOutputManager._create_grammar`, building each request's grammar as it asks
    (`engine_extension.requested`): a fallback engine's from its schema, or outlines' wrapped in
    `BudgetedGrammar`; anything else as vLLM does."""
    tables = CompletionTables(cache_megabytes() << 20)
    fallbacks = FallbackBackends()

    def create_grammar(manager: Any, request: Any) -> StructuredOutputGrammar:
        asked = requested(request.sampling_params)
        engine = asked.get("engine")
        if engine is not None:
            backend = fallbacks.get(manager, engine)
            return backend.compile_grammar(StructuredOutputOptions.JSON, asked["schema"])
        grammar = create(manager, request)
        if not asked.get("budget_aware"):
            return grammar
        backend = manager.backend
        request_type, spec = request.structured_output_request.structured_output_key
        if not (
            isinstance(backend, OutlinesBackend)
            and isinstance(grammar, OutlinesGrammar)
            and request_type == StructuredOutputOptions.REGEX
        ):
            raise ValueError("budget-aware decoding needs the outlines backend and a regex")
        index = backend._compile_index(spec, backend.vocabulary)  # the backend's cache
        key = hashlib.sha256(spec.encode()).hexdigest()
        max_tokens = request.sampling_params.max_tokens
        return BudgetedGrammar(grammar, tables.get(key, index), max_tokens)

    return create_grammar
