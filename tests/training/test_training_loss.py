"""The answer-only loss (left padding, logits on the answer positions) equals the ordinary
causal-LM loss on the completion, on a tiny random Llama (fast, no real weights)."""

from __future__ import annotations

import pytest

from tests.support.tiny_llama import tiny_llama
from training.train import IGNORE_INDEX, _answer_only_loss, _Collator

torch = pytest.importorskip("torch")


def test_answer_only_loss_matches_full_loss() -> None:
    torch.manual_seed(0)
    model = tiny_llama().eval()
    rows = [
        {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE_INDEX] * 4 + [9, 10, 11]},
        {"input_ids": [12, 13, 14, 15], "labels": [IGNORE_INDEX] * 2 + [14, 15]},
        {"input_ids": [3, 4, 20, 21, 22], "labels": [IGNORE_INDEX] * 2 + [20, 21, 22]},
    ]
    full = _Collator(pad_id=0, left=False)(rows)
    with torch.no_grad():
        expected = model(**full).loss
        left = _Collator(pad_id=0, left=True)(rows)
        assert left["logits_to_keep"] == 4
        got, _ = _answer_only_loss(model, dict(left), None)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
