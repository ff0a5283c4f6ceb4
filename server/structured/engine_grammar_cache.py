"""The vLLM general plugin that bounds the engine's cache of compiled outlines grammars by size.

Declared in pyproject.toml (`vllm.general_plugins`: `hotswap_grammar_cache`), so vLLM runs
`register()` in every process it starts, the engine core included, before it builds a backend.

Why: vLLM's outlines backend keeps every compiled token index in `get_outlines_cache()`, an
LRU of 128 entries whatever their size (`vllm/v1/structured_output/utils.py`). One index of the
default model takes from under 1 MB to hundreds of MB serialized, and about 2.2 times that
resident, so 128 of them are not a memory bound: 40 distinct corpus schemas in such an LRU
already hold 1.9 GiB (`loadtests/bench_grammar_memory.py`; `docs/benchmarks.md`, "Memory under
500 schemas"). `register()` makes the backend build a cache bounded by
the bytes its indexes hold instead: `HOTSWAP_GRAMMAR_CACHE_MB` (default 512) megabytes of
serialized index, the least recently used evicted first. An index is measured once, when it
enters the cache (outlines_core's own serialization, about 3 ms per MB). A single index larger
than the whole cache is used for its request and not kept.

The hook: `OutlinesBackend.__post_init__` calls the name `get_outlines_cache` that
`vllm.v1.structured_output.backend_outlines` imported; `register()` rebinds that module
attribute. With `VLLM_V1_USE_OUTLINES_CACHE` set, vLLM's own on-disk cache stays (unbounded:
vLLM warns against it with untrusted clients).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from cachetools import LRUCache

logger = logging.getLogger(__name__)

ENV_VAR = "HOTSWAP_GRAMMAR_CACHE_MB"
DEFAULT_CACHE_MB = 512
_MARKER = "_hotswap_grammar_cache"
V = TypeVar("V")


def index_bytes(index: Any) -> int:
    """Bytes of an `outlines_core.Index` as its own serialization writes them.

    The pickle protocol of outlines_core's Index hands back `(Index.from_binary, (bytes,))`; the
    length of those bytes grows with the index's states and transitions, which is what it holds
    in memory (resident about 2.2 times this: `loadtests/bench_grammar_memory.py`).
    """
    _, args = index.__reduce__()[:2]
    return len(args[0])


class BytesBoundedCache(LRUCache[str, V]):
    """An LRU bounded by the total size in bytes of what it holds (`sizeof`), not by a count;
    one entry larger than the whole cache is served and not kept."""

    def __init__(self, max_bytes: int, sizeof: Callable[[V], int], what: str) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=sizeof)
        self._sizeof = sizeof
        self._what = what

    def __setitem__(self, key: str, value: V) -> None:
        try:
            super().__setitem__(key, value)
        except ValueError:  # larger than the whole cache: serve it, keep nothing
            logger.warning(
                "A %s of %.1f MB exceeds %s=%d; it is not cached.",
                self._what,
                self._sizeof(value) / 2**20,
                ENV_VAR,
                int(self.maxsize) >> 20,
            )


class GrammarCache(BytesBoundedCache[Any]):
    """An LRU of compiled indexes bounded by their total size in bytes, not by their count."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, index_bytes, "compiled grammar")


def cache_megabytes() -> int:
    """The cache size the environment asks for, in MB (the default when unset)."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_CACHE_MB
    value = int(raw)
    if value < 1:
        raise ValueError(f"{ENV_VAR} must be at least 1 (MB), got {raw!r}")
    return value


def make_grammar_cache() -> Any:
    """What the outlines backend gets instead of `get_outlines_cache()`."""
    from vllm import envs

    if envs.VLLM_V1_USE_OUTLINES_CACHE:
        from vllm.v1.structured_output.utils import get_outlines_cache

        return get_outlines_cache()
    megabytes = cache_megabytes()
    logger.info("Compiled outlines grammars cached up to %d MB.", megabytes)
    return GrammarCache(megabytes << 20)


def register() -> None:
    """Give vLLM's outlines backend the size-bounded cache (idempotent)."""
    cache_megabytes()  # a bad setting fails at start, not at the first schema
    from vllm.v1.structured_output import backend_outlines

    if getattr(backend_outlines, _MARKER, False):
        return
    backend_outlines.get_outlines_cache = make_grammar_cache
    setattr(backend_outlines, _MARKER, True)
