"""Tiny random Llama and Gemma 3 models for fast training tests: the real architectures, no
real weights."""

from __future__ import annotations

from collections.abc import Callable
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


def tiny_gemma3(window: int = 16, **overrides: Any) -> Any:
    """A `Gemma3ForCausalLM` of 4 layers, sliding-window (`window` tokens) and full attention
    alternating, 32 wide, a 64-token vocabulary; every `Gemma3TextConfig` field overridable."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    fields: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": window,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
    }
    return Gemma3ForCausalLM(Gemma3TextConfig(**(fields | overrides)))


def tiny_lora_model(base: Any, layers_from: int) -> Any:
    """`base` with a rank-4 LoRA on q, v and down of the layers from `layers_from`, its B
    nonzero (the adapter changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=list(range(layers_from, int(base.config.num_hidden_layers))),
        init_lora_weights=False,
    )
    return get_peft_model(base, lora)


def loss_and_grads(
    model: Any,
    rows: list[dict[str, Any]],
    left: bool = True,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> tuple[float, dict[str, Any]]:
    """One training step's loss and adapter gradients on `rows`, batched by `collate` (the
    training collator by default). Left padding: the answer-only loss; right padding: the
    model's own (the trainer's path with `answer_only_logits` off)."""
    from training.train import _answer_only_loss, _Collator

    model.zero_grad()
    batch = (collate or _Collator(pad_id=0, left=left))(rows)
    loss = _answer_only_loss(model, dict(batch), None)[0] if left else model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads
