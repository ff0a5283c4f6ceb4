"""Training steps that run the tokens every example opens with once, not once per row.

Every training row of a task starts with the same tokens: the chat template's header and the
task's system message (14 of a BANKING77 row's ~46 tokens with SmolLM2). Causal attention
makes their keys and values in every layer independent of what follows, so a step runs them
once, for one row, and gives them to the whole batch as a KV cache: the batch runs only the
tokens after them. The adapter's gradient through the shared keys and values is the sum over
the batch's rows, as when every row carries its own copy, so the loss and gradients are those
of the full rows (`tests/training/test_shared_prompt.py`).

`split_rows` cuts the shared tokens off the rows, `SharedPromptCollator` puts them back in
front of every batch's attention mask and positions, and `prompt_cache` runs them at each
step. Where the frozen lower layers are cached (`training.frozen_prefix`),
`cache_lower_layers` runs the shared tokens through them once too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from training import frozen_prefix
from training.frozen_prefix import PREFIX_KEY

SHARED_PROMPT_KEY = "shared_prompt"
"""The batch key of the shared tokens' model input for one row: `input_ids` (1, n) or, with
the frozen lower layers cached, their output as `inputs_embeds` (1, n, hidden)."""


def shared_length(token_rows: Sequence[Sequence[int]], limit: int) -> int:
    """How many leading tokens every row has in common, at most `limit` (the caller keeps
    every row at least one prompt token of its own: the position whose logits predict its
    first answer token)."""
    if not token_rows:
        return 0
    first = token_rows[0]
    length = max(limit, 0)
    for ids in token_rows[1:]:
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    return length


def sliding_window(model: Any) -> int | None:
    """The model's attention window where some layers have one. A padded row's window counts
    its padding, which sits before the shared tokens in a whole row and after them in a split
    one: the two agree only on rows shorter than the window."""
    window = getattr(model.config, "sliding_window", None)
    types = getattr(model.config, "layer_types", None) or []
    if window is None or (types and "sliding_attention" not in types):
        return None
    return int(window)


def split_rows(rows: list[dict[str, Any]], length: int) -> dict[str, torch.Tensor]:
    """Cut the first `length` tokens off every row (ids and labels) and return them as the
    model input for one row."""
    shared = {"input_ids": torch.tensor([rows[0]["input_ids"][:length]])}
    for row in rows:
        row["input_ids"] = row["input_ids"][length:]
        row["labels"] = row["labels"][length:]
    return shared


class SharedPromptCollator:
    """Batches rows cut by `split_rows`: the inner collator pads them, then the shared tokens
    go in front of the attention mask and positions, and ride along under
    `SHARED_PROMPT_KEY` for `prompt_cache`."""

    def __init__(
        self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], shared: dict[str, Any]
    ) -> None:
        self.collate = collate
        self.shared = shared
        self.length = int(next(iter(shared.values())).shape[1])

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(rows)
        mask = batch["attention_mask"]
        batch["attention_mask"] = torch.cat(
            [mask.new_ones((mask.shape[0], self.length)), mask], dim=-1
        )
        batch["position_ids"] = batch["position_ids"] + self.length
        batch[SHARED_PROMPT_KEY] = self.shared
        return batch


def cache_lower_layers(
    model: Any, rows: list[dict[str, Any]], layers: int, step: SharedPromptCollator
) -> None:
    """`frozen_prefix.cache_prefix` for rows cut by `split_rows`: their batches attend to the
    shared tokens' keys and values in the lower layers (run once), and the shared tokens' own
    output of those layers becomes the steps' shared input."""
    decoder = frozen_prefix.decoder(model)
    with torch.no_grad():
        run = decoder(**step.shared, use_cache=True).past_key_values
    frozen_prefix.cache_prefix(
        model, rows, layers, step, past=lambda rows_in_batch: _expanded(run, rows_in_batch, model)
    )
    ids = step.shared["input_ids"][0].tolist()
    prompt = [{"input_ids": ids, "labels": ids}]
    frozen_prefix.cache_prefix(model, prompt, layers, step.collate)
    step.shared = {"inputs_embeds": prompt[0][PREFIX_KEY].unsqueeze(0)}


def prompt_cache(model: Any, shared: dict[str, torch.Tensor], batch_size: int) -> Any:
    """The shared tokens' keys and values in every layer, run once (with the adapter, so the
    gradient reaches it) and expanded to `batch_size` rows, as the `past_key_values` of the
    batch's forward pass."""
    run = frozen_prefix.decoder(model)(**shared, use_cache=True).past_key_values
    return _expanded(run, batch_size, model)


def _expanded(run: Any, batch_size: int, model: Any) -> Any:
    """A fresh cache holding `run`'s keys and values for each of `batch_size` rows. Layers
    that passed their input through (`frozen_prefix`) get zeros they never read: the
    attention mask is sized by the first layer's cache length."""
    from transformers import DynamicCache

    filled = [(k, v) for k, v, *_ in run if k is not None and k.numel()]
    if not filled:
        raise ValueError("no layer of the model cached the shared prompt")
    like_keys, like_values = filled[0]
    layers = []
    for keys, values, *_ in run:
        if keys is None or not keys.numel():
            keys, values = (
                like_keys.new_zeros(like_keys.shape),
                like_values.new_zeros(like_values.shape),
            )
        layers.append((keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1)))
    return DynamicCache(layers, config=model.config)
