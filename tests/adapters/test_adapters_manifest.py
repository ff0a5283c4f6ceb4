"""The manifest model's rules and prompt rendering, and the base spec read from config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.base_spec import BaseSpecError, TargetModule, spec_from_hf_config
from adapters.manifest import AdapterManifest, TaskSpec


@pytest.mark.parametrize("name", ["intent", "a", "v2.intent_cls-x", "0" * 64])
def test_valid_names(name: str) -> None:
    assert AdapterManifest(name=name).name == name


@pytest.mark.parametrize("name", ["", "Intent", "-x", ".x", "a@1", "a b", "a/b", "x" * 65])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValidationError, match="adapter name"):
        AdapterManifest(name=name)


def test_render_messages_frames_input_like_training() -> None:
    spec = TaskSpec(system_message="Answer in JSON.", input_template='{"text": "{input}"}')

    assert spec.render_messages("hi {there}") == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": '{"text": "hi {there}"}'},
    ]
    assert TaskSpec().render_messages("x") == [{"role": "user", "content": "x"}]


LABELLED: dict[str, Any] = {
    "labels": ["a", "b"],
    "label_field": "label",
    "output_schema": {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}},
}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_template": "no placeholder"}, "must contain {input}"),
        ({"output_schema": {"type": 5}}, "not a valid JSON Schema"),
        ({"labels": []}, "non-empty list without duplicates"),
        ({"labels": ["a", "a"]}, "non-empty list without duplicates"),
        ({"label_field": "label"}, "label_field needs labels"),
        ({**LABELLED, "label_field": "intent"}, "not a property of output_schema"),
        ({**LABELLED, "reference_distribution": {"a": 1.0}}, "exactly one entry per label"),
        ({**LABELLED, "reference_distribution": {"a": 1.5, "b": -0.5}}, "negative probability"),
        ({**LABELLED, "reference_distribution": {"a": 0.5, "b": 0.49}}, "sum to 1"),
        (
            {**LABELLED, "calibration": {"predicted_distribution": {"a": 0.9}}},
            "calibration.predicted_distribution must have exactly one entry per label",
        ),
        ({**LABELLED, "calibration": {"temperature": 0.0}}, "greater than 0.01"),
        ({**LABELLED, "calibration": {"abstain_below": 1.5}}, "less than or equal to 1"),
    ],
)
def test_task_spec_rules(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskSpec(**fields)


def test_task_spec_accepts_a_full_labelled_task() -> None:
    spec = TaskSpec(**LABELLED, reference_distribution={"a": 0.3, "b": 0.7 + 1e-7})

    assert spec.labels == ["a", "b"]


def test_spec_from_hf_config_derives_llama_shapes(tmp_path: Path) -> None:
    config = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "num_hidden_layers": 30,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = spec_from_hf_config(tmp_path, fingerprint="sha256:x", max_lora_rank=64)

    assert spec.num_layers == 30 and spec.max_lora_rank == 64
    assert spec.modules["q_proj"] == TargetModule("self_attn.q_proj", 576, 576)
    assert spec.modules["k_proj"] == TargetModule("self_attn.k_proj", 576, 192)
    assert spec.modules["o_proj"] == TargetModule("self_attn.o_proj", 576, 576)
    assert spec.modules["down_proj"] == TargetModule("mlp.down_proj", 1536, 576)


def test_spec_from_hf_config_explains_an_unusable_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))

    with pytest.raises(BaseSpecError, match="Llama-style"):
        spec_from_hf_config(tmp_path, fingerprint="sha256:x", max_lora_rank=8)
