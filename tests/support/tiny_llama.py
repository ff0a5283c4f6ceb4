"""A tiny random Llama for fast training tests: the real architecture, no real weights."""

from __future__ import annotations

from typing import Any


def tiny_llama(**overrides: Any) -> Any:
    """A `LlamaForCausalLM` of 32-wide layers (2 unless `num_hidden_layers` says otherwise)
    and a 64-token vocabulary, every `LlamaConfig` field overridable; seed it first."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    return LlamaForCausalLM(LlamaConfig(**(fields | overrides)))
