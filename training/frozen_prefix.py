"""Training from cached outputs of the frozen lower layers.

With `lora.layers_from` k the layers below k carry no adapter weights: when they also drop
nothing out, their output for an example is the same in every epoch and every validation.
`cache_prefix` computes it once per example (no gradient, batches of similar length), and
`skipping_prefix` swaps those layers for pass-throughs while the trainer runs, so each step
starts at layer k from the cached hidden states (the collator hands them to the model as
`inputs_embeds`). On SmolLM2-135M with k = 15 the lower half is a fifth to a quarter of a
training step's CPU (`docs/training.md`, "Training speed").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)

PREFIX_KEY = "prefix_hidden"
"""The row key of an example's cached hidden states, `(tokens, hidden)` float32."""

MAX_CACHE_BYTES = 4 << 30
"""Above this the cache is not built: the run trains through every layer as before."""

CACHE_BATCH = 32


def decoder_layers(model: Any) -> tuple[Any, Any] | None:
    """The decoder (the module that runs the layers) and its layer list, if it has one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        decoder = base.get_decoder()
    except (AttributeError, ValueError):
        return None
    layers = getattr(decoder, "layers", None)
    return (decoder, layers) if layers is not None else None


def decoder(model: Any) -> Any:
    """The module that runs the decoder layers (with the adapter's layers in place); raises
    ValueError when the model has none this module knows."""
    found = decoder_layers(model)
    if found is None:
        raise ValueError("the model has no decoder layers")
    return found[0]


def cacheable_layers(model: Any, first_trained: int | None) -> int:
    """How many lower layers can be cached: those below `first_trained` when they, and the
    embedding, have no trainable parameter and no dropout; 0 when the model has no layer list
    this module knows or a dropout could make two epochs differ."""
    found = decoder_layers(model)
    if not first_trained or found is None:
        return 0
    decoder, layers = found
    if float(getattr(decoder.config, "attention_dropout", 0.0) or 0.0) > 0.0:
        return 0
    lower = [decoder.get_input_embeddings(), *list(layers)[:first_trained]]
    for module in lower:
        if any(p.requires_grad for p in module.parameters()):
            return 0
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules()):
            return 0
    return first_trained


def cache_bytes(rows: list[dict[str, Any]], hidden_size: int) -> int:
    """What caching `rows` holds in memory (float32 hidden states of every token)."""
    return sum(len(r["input_ids"]) for r in rows) * hidden_size * 4


def cache_prefix(
    model: Any,
    rows: list[dict[str, Any]],
    layers: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    past: Callable[[int], Any] | None = None,
) -> None:
    """Add each row's hidden states after the first `layers` layers under `PREFIX_KEY`.

    Rows are run in batches of similar length, padded by `collate` (the training collator: the
    attention mask and positions the steps give them); each row keeps its own tokens' states.
    `past` gives a batch of that many rows the keys and values of tokens that come before
    every row (`training.shared_prompt`), which the attention mask then starts with."""
    found = decoder_layers(model)
    if found is None or layers <= 0:
        raise ValueError("the model has no decoder layers to cache")
    decoder, all_layers = found
    captured: list[torch.Tensor] = []
    hook = all_layers[layers - 1].register_forward_hook(
        lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    decoder.layers = all_layers[:layers]
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        for start in range(0, len(order), CACHE_BATCH):
            chunk = [rows[i] for i in order[start : start + CACHE_BATCH]]
            batch = collate(chunk)
            captured.clear()
            with torch.no_grad():
                decoder(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"],
                    past_key_values=past(len(chunk)) if past is not None else None,
                )
            hidden = captured[-1].float()
            tokens = batch["attention_mask"][:, -hidden.shape[1] :].bool()
            for b, r in enumerate(chunk):
                r[PREFIX_KEY] = hidden[b][tokens[b]].clone()
    finally:
        decoder.layers = all_layers
        hook.remove()
        model.train(was_training)


class _PassThrough(torch.nn.Module):
    """Stands in for a cached layer: hands the hidden states on unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextmanager
def skipping_prefix(model: Any, layers: int) -> Iterator[None]:
    """Within the block the first `layers` decoder layers pass their input through (the
    batches carry their output as `inputs_embeds`); they are put back on exit."""
    found = decoder_layers(model)
    if found is None or layers <= 0:
        yield
        return
    _, all_layers = found
    kept = [all_layers[i] for i in range(layers)]
    for i in range(layers):
        all_layers[i] = _PassThrough()
    try:
        yield
    finally:
        for i, layer in enumerate(kept):
            all_layers[i] = layer
