"""Running the tokens every row opens with once per step gives the loss and the adapter
gradients of the whole rows, with and without the frozen lower layers cached, on tiny random
models (fast, no real weights): a Llama, and a Gemma 3 with sliding-window layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_llama import loss_and_grads, tiny_gemma3, tiny_llama, tiny_lora_model
from training import frozen_prefix, shared_prompt
from training.framing import IGNORE_INDEX
from training.train import _Collator, _share_prompt

torch = pytest.importorskip("torch")

DEMO = Path(__file__).resolve().parents[2] / "training" / "recipes" / "demo.yaml"
SHARED = [1, 2, 3, 4]
ROWS = [
    {"input_ids": [*SHARED, 5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE_INDEX] * 8 + [9, 10, 11]},
    {"input_ids": [*SHARED, 12, 13, 14, 15], "labels": [IGNORE_INDEX] * 6 + [14, 15]},
    {"input_ids": [*SHARED, 3, 20, 21, 22], "labels": [IGNORE_INDEX] * 5 + [20, 21, 22]},
]


BASES = {"llama": lambda: tiny_llama(num_hidden_layers=4), "gemma3": tiny_gemma3}


def _model(base: str, layers_from: int) -> Any:
    torch.manual_seed(0)
    return tiny_lora_model(BASES[base](), layers_from).train()


def _rows() -> list[dict[str, Any]]:
    return [dict(r) for r in ROWS]


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("cached_layers", [0, 2])
def test_a_shared_prompt_trains_like_the_whole_rows(base: str, cached_layers: int) -> None:
    model = _model(base, layers_from=cached_layers)
    expected_loss, expected_grads = loss_and_grads(model, ROWS)

    rows = _rows()
    collator = _Collator(pad_id=0, left=True)
    limit = min(r["labels"].index(next(t for t in r["labels"] if t != IGNORE_INDEX)) for r in rows)
    assert shared_prompt.shared_length([r["input_ids"] for r in rows], limit - 1) == 4
    shared = shared_prompt.split_rows(rows, 4)
    assert shared["input_ids"].tolist() == [SHARED]
    assert [len(r["input_ids"]) for r in rows] == [7, 4, 4]
    step = shared_prompt.SharedPromptCollator(collator, shared)
    if cached_layers:
        shared_prompt.cache_lower_layers(model, rows, cached_layers, step)
        assert step.shared["inputs_embeds"].shape == (1, 4, 32)
        assert [len(r[frozen_prefix.PREFIX_KEY]) for r in rows] == [7, 4, 4]
    batch = step(rows)
    assert batch["attention_mask"].shape == (3, 4 + 7)
    # the left-padded row: its tokens go on from the shared ones (its masked pads too)
    assert batch["position_ids"][1].tolist() == [4, 4, 4, 4, 5, 6, 7]

    with frozen_prefix.skipping_prefix(model, cached_layers):
        loss, grads = loss_and_grads(model, rows, collate=step)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6)


def test_the_shared_length_stops_at_the_first_difference_and_at_the_limit() -> None:
    rows = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 5], [1, 2, 3, 4]]
    assert shared_prompt.shared_length(rows, 10) == 3
    assert shared_prompt.shared_length(rows, 2) == 2
    assert shared_prompt.shared_length([[7, 1], [8, 1]], 1) == 0
    assert shared_prompt.shared_length([], 3) == 0


def test_training_shares_every_common_token_but_the_last_before_an_answer() -> None:
    from training.recipe import load_recipe

    recipe = load_recipe(DEMO, [])
    rows = [
        {"input_ids": [1, 2, 3, 5], "labels": [IGNORE_INDEX] * 3 + [5]},
        {"input_ids": [1, 2, 3, 4, 6], "labels": [IGNORE_INDEX] * 4 + [6]},
    ]
    collator = _Collator(pad_id=0, left=True)
    model = _model("llama", layers_from=0)
    step, shared = _share_prompt(model, recipe, rows, collator)
    # the first row's prompt is 3 tokens: its last one predicts the answer and stays
    assert shared == 2 and [r["input_ids"] for r in rows] == [[3, 5], [3, 4, 6]]
    assert isinstance(step, shared_prompt.SharedPromptCollator)

    off = load_recipe(DEMO, ["train.share_prompt=false"])
    assert _share_prompt(model, off, _rows(), collator) == (collator, 0)
    whole = load_recipe(DEMO, ["train.answer_only_logits=false"])
    assert _share_prompt(model, whole, _rows(), collator) == (collator, 0)
    # a window that counts the padding differently in split rows: not shared
    short_window = tiny_lora_model(tiny_gemma3(window=11), 0)
    assert _share_prompt(short_window, recipe, _rows(), collator) == (collator, 0)
    assert _share_prompt(_model("gemma3", 0), recipe, _rows(), collator)[1] == 4


def test_a_row_cut_to_max_seq_len_keeps_the_framing_so_every_row_shares_it(
    base_model_path: Path,
) -> None:
    from transformers import AutoTokenizer

    from adapters.manifest import TaskSpec
    from training.data import Example
    from training.framing import prompt_ids
    from training.train import tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    spec = TaskSpec(system_message="Classify the banking request.")
    long_text = "my card " * 40 + "has not arrived"
    examples = [Example("where is my card", {"intent": "card_arrival"}), Example(long_text, {})]
    rows = tokenize_examples(tokenizer, spec, examples, max_len=48)

    whole = prompt_ids(tokenizer, spec, long_text)
    cut = rows[1]["input_ids"]
    prompt = rows[1]["labels"].count(IGNORE_INDEX)
    assert len(cut) == 48 and prompt < 48
    limit = len(rows[0]["input_ids"]) - 1
    shared = shared_prompt.shared_length([r["input_ids"] for r in rows], limit)
    assert shared >= 10 and cut[:shared] == whole[:shared]  # the chat header and system message
    assert cut[shared:prompt] == whole[len(whole) - (prompt - shared) :]  # then the text's end
