"""What an adapter must fit: the served base model's LoRA-targetable modules and their shapes.

Built from the HF `config.json` alone (no torch), for Llama-style decoders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

PEFT_LAYER_PREFIX = "base_model.model.model.layers"


class BaseSpecError(ValueError):
    """The base model's config.json cannot be turned into a spec."""


class TargetModule(NamedTuple):
    """A linear layer inside each decoder layer: its path there and its (in, out) features."""

    path: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class BaseModelSpec:
    """The served base model as adapter validation sees it.

    A LoRA tensor for module `m` of layer `i` is named
    `{layer_prefix}.{i}.{modules[m].path}.lora_A.weight` (and `lora_B`).
    """

    fingerprint: str
    max_lora_rank: int
    num_layers: int
    modules: Mapping[str, TargetModule]
    layer_prefix: str = PEFT_LAYER_PREFIX


def spec_from_hf_config(model_dir: Path, *, fingerprint: str, max_lora_rank: int) -> BaseModelSpec:
    """Read `model_dir/config.json` (Llama-style attention + gated MLP) into a spec."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
        hidden = int(config["hidden_size"])
        intermediate = int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        num_layers = int(config["num_hidden_layers"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BaseSpecError(
            f"{config_path} does not describe a Llama-style model (hidden_size, "
            f"intermediate_size, num_attention_heads, num_hidden_layers): {exc!r}"
        ) from exc
    modules = {
        "q_proj": TargetModule("self_attn.q_proj", hidden, heads * head_dim),
        "k_proj": TargetModule("self_attn.k_proj", hidden, kv_heads * head_dim),
        "v_proj": TargetModule("self_attn.v_proj", hidden, kv_heads * head_dim),
        "o_proj": TargetModule("self_attn.o_proj", heads * head_dim, hidden),
        "gate_proj": TargetModule("mlp.gate_proj", hidden, intermediate),
        "up_proj": TargetModule("mlp.up_proj", hidden, intermediate),
        "down_proj": TargetModule("mlp.down_proj", intermediate, hidden),
    }
    return BaseModelSpec(
        fingerprint=fingerprint,
        max_lora_rank=max_lora_rank,
        num_layers=num_layers,
        modules=modules,
    )
