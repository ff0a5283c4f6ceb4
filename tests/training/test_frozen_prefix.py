"""Training from the cached output of the frozen lower layers gives the loss and the adapter
gradients of training through every layer, on a tiny random Llama (fast, no real weights)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.tiny_llama import loss_and_grads, tiny_llama, tiny_lora_model
from training import frozen_prefix
from training.framing import IGNORE_INDEX
from training.train import _Collator

torch = pytest.importorskip("torch")

ROWS = [
    {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE_INDEX] * 4 + [9, 10, 11]},
    {"input_ids": [12, 13, 14, 15], "labels": [IGNORE_INDEX] * 2 + [14, 15]},
    {"input_ids": [3, 4, 20, 21, 22], "labels": [IGNORE_INDEX] * 2 + [20, 21, 22]},
]


def _model(layers_from: int, dropout: float = 0.0) -> Any:
    torch.manual_seed(0)
    return tiny_lora_model(tiny_llama(num_hidden_layers=4, attention_dropout=dropout), layers_from)


@pytest.mark.parametrize("left", [True, False])
def test_cached_prefix_trains_like_the_full_model(left: bool) -> None:
    model = _model(layers_from=2).train()
    expected_loss, expected_grads = loss_and_grads(model, ROWS, left)

    assert frozen_prefix.cacheable_layers(model, 2) == 2
    rows: list[dict[str, Any]] = [dict(r) for r in ROWS]
    frozen_prefix.cache_prefix(model, rows, 2, _Collator(pad_id=0, left=left))
    assert [tuple(r[frozen_prefix.PREFIX_KEY].shape) for r in rows] == [(7, 32), (4, 32), (5, 32)]
    assert model.training  # cache_prefix leaves the mode as it found it
    batch = _Collator(pad_id=0, left=left)(rows)
    assert "input_ids" not in batch and batch["inputs_embeds"].shape == (3, 7, 32)
    with frozen_prefix.skipping_prefix(model, 2):
        loss, grads = loss_and_grads(model, rows, left)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6)

    # the layers are back: the full model gives the same loss again
    again, _ = loss_and_grads(model, ROWS, left)
    assert again == pytest.approx(expected_loss, rel=1e-6)


def test_nothing_is_cached_where_the_lower_layers_could_differ() -> None:
    assert frozen_prefix.cacheable_layers(_model(layers_from=2), None) == 0
    assert frozen_prefix.cacheable_layers(_model(layers_from=0), 0) == 0
    assert frozen_prefix.cacheable_layers(_model(layers_from=2, dropout=0.1), 2) == 0
    # an adapter on a layer below the cut: its output changes as training goes
    assert frozen_prefix.cacheable_layers(_model(layers_from=1), 2) == 0


def test_cache_size_counts_every_token() -> None:
    assert frozen_prefix.cache_bytes(ROWS, 32) == (7 + 4 + 5) * 32 * 4
