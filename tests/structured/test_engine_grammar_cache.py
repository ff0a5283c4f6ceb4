"""The engine's compiled-grammar cache, bounded by bytes: the cache itself and the vLLM plugin."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import SimpleNamespace

import outlines_core
import pytest
from transformers import AutoTokenizer

from server.structured import engine_grammar_cache as plugin
from server.structured.engine_grammar_cache import GrammarCache, index_bytes

# a vocabulary of single letters and digits is enough to build real indexes
_VOCABULARY = outlines_core.Vocabulary(
    0, {c: [i + 1] for i, c in enumerate("abcdefghijklmnopqrstuvwxyz0123456789")}
)
_OBJECT = '\\{"a":"[a-z]{0,32}","b":[0-9]{1,15}\\}'


def _index(regex: str) -> outlines_core.Index:
    return outlines_core.Index(regex, _VOCABULARY)


def test_index_bytes_grows_with_the_grammar() -> None:
    small, large = index_bytes(_index("[a-z]{1,3}")), index_bytes(_index("[a-z]{1,300}"))
    assert 0 < small < large
    # the measure is the index's own serialization: it round-trips
    index = _index("[a-z]{1,30}")
    rebuilt = outlines_core.Index.from_binary(index.__reduce__()[1][0])
    assert rebuilt.get_final_states() == index.get_final_states()


def test_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    indexes = {n: _index(f"[a-z]{{1,{n}}}") for n in (100, 101, 102)}
    one = index_bytes(indexes[100])
    cache = GrammarCache(max_bytes=int(one * 2.5))
    cache["100"], cache["101"] = indexes[100], indexes[101]
    assert cache["100"] is indexes[100]  # "100" is now the most recently used
    cache["102"] = indexes[102]
    assert set(cache) == {"100", "102"}
    assert cache.currsize <= cache.maxsize


def test_a_grammar_larger_than_the_cache_is_served_but_not_kept() -> None:
    cache = GrammarCache(max_bytes=1024)
    cache["small"] = small = _index("[a-b]")
    cache["large"] = _index("[a-z]{1,200}")
    assert "large" not in cache and cache["small"] is small


@pytest.mark.parametrize(("value", "megabytes"), [(None, 512), ("", 512), ("64", 64)])
def test_size_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, megabytes: int
) -> None:
    if value is None:
        monkeypatch.delenv(plugin.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(plugin.ENV_VAR, value)
    assert plugin.cache_megabytes() == megabytes


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_a_bad_size_fails_at_registration(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(plugin.ENV_VAR, value)
    with pytest.raises(ValueError):
        plugin.register()


def test_the_plugin_is_declared_to_vllm() -> None:
    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert {ep.name: ep.value for ep in plugins}["hotswap_grammar_cache"] == (
        "server.structured.engine_grammar_cache:register"
    )


@pytest.mark.vllm
def test_vllms_outlines_backend_caches_within_the_bound(
    monkeypatch: pytest.MonkeyPatch, base_model_path: Path
) -> None:
    """The real backend with the served model's tokenizer, as the engine core builds it."""
    from vllm.v1.structured_output import backend_outlines
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    monkeypatch.setattr(backend_outlines, "get_outlines_cache", backend_outlines.get_outlines_cache)
    monkeypatch.setattr(backend_outlines, plugin._MARKER, False, raising=False)
    monkeypatch.delenv("VLLM_V1_USE_OUTLINES_CACHE", raising=False)
    monkeypatch.setenv(plugin.ENV_VAR, "1")
    plugin.register()
    plugin.register()  # idempotent

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    config = SimpleNamespace(speculative_config=None)
    backend = backend_outlines.OutlinesBackend(config, tokenizer, len(tokenizer))
    assert isinstance(backend.cache, GrammarCache) and backend.cache.maxsize == 1 << 20

    for regex in ("[a-z]{1,5}", "[0-9]{1,3}", _OBJECT, "(yes|no)"):
        grammar = backend.compile_grammar(StructuredOutputOptions.REGEX, regex)
        assert not grammar.is_terminated()
        assert backend.cache.currsize <= backend.cache.maxsize
    # the object's index (about 2 MB with this vocabulary) was used, not kept; the rest were
    kept = {key.split("_", 1)[1] for key in backend.cache}
    assert kept == {"[a-z]{1,5}", "[0-9]{1,3}", "(yes|no)"}
