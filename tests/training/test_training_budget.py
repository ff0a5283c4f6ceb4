"""Evaluation runs with the max_tokens serving uses: the output schema's token budget."""

from __future__ import annotations

import json

import pytest

from adapters.document_budget import document_budget
from adapters.manifest import TaskSpec
from training.data import build_output_schema, build_task_spec
from training.evaluate import EvalError, schema_max_tokens
from training.recipe import TaskConfig

LABELS = ["card_arrival", "activate_my_card", "verify_top_up"]
SLOTS = ["amount", "date"]


def test_classification_budget_is_the_longest_answer_plus_end_of_sequence() -> None:
    spec = build_task_spec(TaskConfig(), LABELS)
    longest = max(len(json.dumps({"intent": label}, separators=(",", ":"))) for label in LABELS)
    assert schema_max_tokens(spec) == longest + 1


def test_extraction_knobs_shape_the_schema_and_its_budget() -> None:
    pattern = "[ !#-\\[\\]-~£€]{0,32}"
    task = TaskConfig(
        kind="extraction",
        output_field="intents",
        max_labels=2,
        slot_value_schema={"type": "string", "pattern": pattern},
    )
    schema = build_output_schema(task, LABELS, SLOTS)
    assert schema["properties"]["intents"]["maxItems"] == 2
    assert schema["properties"]["slots"]["properties"]["date"] == {
        "type": "string",
        "pattern": pattern,
    }
    wider = build_output_schema(task.model_copy(update={"max_labels": 3}), LABELS, SLOTS)
    spec = build_task_spec(task, LABELS, SLOTS)
    assert schema_max_tokens(spec) == document_budget(schema).max_tokens
    assert schema_max_tokens(spec) < (document_budget(wider).max_tokens or 0)


def test_unbounded_or_missing_schema_asks_for_max_tokens() -> None:
    free = TaskSpec(output_schema={"type": "object", "properties": {"note": {"type": "string"}}})
    with pytest.raises(EvalError, match="any length"):
        schema_max_tokens(free)
    with pytest.raises(EvalError, match=r"eval\.max_tokens"):
        schema_max_tokens(TaskSpec())
