"""The answer-only loss (the decoder's hidden states at the positions that predict a label,
through the model's head) equals the ordinary causal-LM loss on the same labels, on tiny
random models (fast, no real weights); the label-choice mask keeps a classification answer's
branching points only."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.label_trie import LabelTrie
from adapters.manifest import TaskSpec
from tests.support.char_tokenizer import CharTokenizer
from tests.support.tiny_llama import tiny_gemma3, tiny_llama
from training.framing import IGNORE_INDEX
from training.label_choices import LabelChoices
from training.train import _answer_only_loss, _Collator

torch = pytest.importorskip("torch")

ROWS = [
    {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE_INDEX] * 4 + [9, 10, 11]},
    {"input_ids": [12, 13, 14, 15], "labels": [IGNORE_INDEX] * 2 + [14, 15]},
    {"input_ids": [3, 4, 20, 21, 22], "labels": [IGNORE_INDEX] * 2 + [20, 21, 22]},
]
BASES = {
    "llama": tiny_llama,
    "gemma3 soft-capped": lambda: tiny_gemma3(final_logit_softcapping=2.0),
}


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("sparse", [False, True], ids=["every answer token", "some tokens"])
def test_answer_only_loss_matches_the_models_own_loss(base: str, sparse: bool) -> None:
    torch.manual_seed(0)
    model = BASES[base]().eval()
    rows: list[dict[str, Any]] = [dict(r) for r in ROWS]
    if sparse:
        rows[0]["labels"] = [IGNORE_INDEX] * 5 + [10, IGNORE_INDEX]
        rows[2]["labels"] = [IGNORE_INDEX] * 2 + [20, IGNORE_INDEX, 22]
    full = _Collator(pad_id=0, left=False)(rows)
    with torch.no_grad():
        expected = model(**full).loss
        got, outputs = _answer_only_loss(model, dict(_Collator(pad_id=0, left=True)(rows)), None)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert outputs["logits"].shape == (5 if sparse else 8, 64)


EOS = 2


def _answer(trie: LabelTrie, label: str) -> list[int]:
    return [*trie.sequences[trie.labels.index(label)], EOS]


def test_label_choices_keep_the_branching_points_and_end_the_row_at_the_last() -> None:
    trie = LabelTrie.build(CharTokenizer(), "i", ["card_lost", "card_late", "top_up"])
    choices = LabelChoices(trie)
    answer = _answer(trie, "card_late")
    row = {"input_ids": [7, 8, 9, *answer], "labels": [IGNORE_INDEX] * 3 + answer}
    choices.cut(row)
    opening = len('{"i":"')
    # the first letter of a label, then "lost" or "late" after "card_l": nothing else
    second = 3 + opening + len("card_l")
    expected = [IGNORE_INDEX] * (second + 1)
    expected[3 + opening] = ord("c")
    expected[second] = ord("a")
    assert row == {"input_ids": [7, 8, 9, *answer][: second + 1], "labels": expected}
    top = {
        "input_ids": [7, *_answer(trie, "top_up")],
        "labels": [IGNORE_INDEX, *_answer(trie, "top_up")],
    }
    choices.cut(top)
    assert top["labels"] == [IGNORE_INDEX] * (1 + opening) + [ord("t")]


def test_cut_rows_train_like_the_whole_rows_with_the_same_labels() -> None:
    trie = LabelTrie.from_sequences(
        ["a", "b", "c"], [(30, 31, 40, 41), (30, 31, 42, 43), (30, 32, 44, 45)]
    )
    rows = [
        {
            "input_ids": [5, 6, 7, *trie.sequences[0], EOS],
            "labels": [IGNORE_INDEX] * 3 + [*trie.sequences[0], EOS],
        },
        {
            "input_ids": [8, 9, *trie.sequences[2], EOS],
            "labels": [IGNORE_INDEX] * 2 + [*trie.sequences[2], EOS],
        },
    ]
    cut = [dict(r) for r in rows]
    for row in cut:
        LabelChoices(trie).cut(row)
    masked = [
        {
            "input_ids": r["input_ids"],
            "labels": c["labels"] + [IGNORE_INDEX] * (len(r["labels"]) - len(c["labels"])),
        }
        for r, c in zip(rows, cut, strict=True)
    ]
    assert len(cut[0]["input_ids"]) == 3 + 3 and len(cut[1]["input_ids"]) == 2 + 2
    torch.manual_seed(0)
    model = tiny_llama().eval()
    collate = _Collator(pad_id=0, left=True)
    with torch.no_grad():
        expected, _ = _answer_only_loss(model, dict(collate(masked)), None)
        got, _ = _answer_only_loss(model, dict(collate(cut)), None)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_an_answer_that_is_no_label_is_refused() -> None:
    choices = LabelChoices(LabelTrie.build(CharTokenizer(), "i", ["yes", "no"]))
    answer = [*CharTokenizer().encode('{"i":"maybe"}'), EOS]
    with pytest.raises(ValueError, match="not a label's answer"):
        choices.cut({"input_ids": [1, *answer], "labels": [IGNORE_INDEX, *answer]})


def _enum_task(labels: list[str]) -> TaskSpec:
    schema = {
        "type": "object",
        "properties": {"i": {"enum": labels}},
        "required": ["i"],
        "additionalProperties": False,
    }
    return TaskSpec(output_schema=schema, labels=labels, label_field="i")


def test_only_a_choice_between_labels_gets_the_label_choice_loss() -> None:
    assert LabelChoices.for_task(CharTokenizer(), _enum_task(["yes", "no"])) is not None
    assert LabelChoices.for_task(CharTokenizer(), _enum_task(["only"])) is None
    free = TaskSpec(output_schema={"type": "object", "properties": {"note": {"type": "string"}}})
    assert LabelChoices.for_task(CharTokenizer(), free) is None
