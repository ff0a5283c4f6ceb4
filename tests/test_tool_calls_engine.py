"""Tool calls end to end through the real server, engine and base model, with the official
OpenAI SDK: every call returned parses and validates against its function's `parameters`."""

from __future__ import annotations

import json
from typing import Any

import instructor
import jsonschema
import pytest
from openai import OpenAI, UnprocessableEntityError
from pydantic import BaseModel, Field

pytestmark = pytest.mark.engine

BASE = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 99},
        "b": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["a", "b"],
}
PARAMETERS = {"get_weather": WEATHER, "add": ADD}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": name, "description": f"The {name} function.", "parameters": params},
    }
    for name, params in PARAMETERS.items()
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check_calls(calls: Any, names: set[str] | None = None) -> None:
    assert calls, "no tool call returned"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert names is None or call.function.name in names
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, PARAMETERS[call.function.name])


def _create(openai_client: OpenAI, **fields: Any) -> Any:
    return openai_client.chat.completions.create(
        model=BASE, messages=fields.pop("messages", ASK), temperature=0, **fields
    )


@pytest.mark.parametrize(("parallel", "max_tokens"), [(True, None), (False, None), (True, 64)])
def test_required_returns_valid_calls(
    openai_client: OpenAI, parallel: bool, max_tokens: int | None
) -> None:
    reply = _create(
        openai_client,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=parallel,
        max_tokens=max_tokens,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    _check_calls(choice.message.tool_calls)
    assert parallel or len(choice.message.tool_calls) == 1


def test_a_named_function_is_the_one_called(openai_client: OpenAI) -> None:
    reply = _create(
        openai_client,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=64,
    )
    calls = reply.choices[0].message.tool_calls
    _check_calls(calls, {"add"})
    assert len(calls) == 1


def test_auto_answers_text_or_valid_calls(openai_client: OpenAI) -> None:
    reply = _create(openai_client, tools=TOOLS, max_tokens=48)
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message.tool_calls)
    else:
        assert choice.message.content and choice.finish_reason in {"stop", "length"}


def test_none_answers_text(openai_client: OpenAI) -> None:
    reply = _create(openai_client, tools=TOOLS, tool_choice="none", max_tokens=16)
    choice = reply.choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert choice.finish_reason in {"stop", "length"}


def test_streamed_calls_assemble_into_valid_calls(openai_client: OpenAI) -> None:
    stream = _create(
        openai_client,
        tools=TOOLS,
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish, usage = None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and calls
    assert usage is not None and usage.completion_tokens > 0
    for call in calls.values():
        assert call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])


def test_a_history_with_tool_calls_and_results_is_answered(openai_client: OpenAI) -> None:
    history: list[Any] = [
        {"role": "user", "content": "Add 2 and 3."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    reply = _create(openai_client, messages=history, tools=TOOLS, tool_choice="none", max_tokens=16)
    assert reply.choices[0].message.content
    again = _create(
        openai_client, messages=history, tools=TOOLS, tool_choice="required", max_tokens=64
    )
    _check_calls(again.choices[0].message.tool_calls)


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def test_instructor_tools_mode_gets_the_object(openai_client: OpenAI) -> None:
    """instructor's default mode sends the model as a named tool."""
    patched = instructor.from_openai(openai_client, mode=instructor.Mode.TOOLS)
    person = patched.chat.completions.create(
        model=BASE,
        response_model=Person,
        messages=[{"role": "user", "content": "Ada is 36 years old."}],
        max_tokens=64,
        temperature=0,
        max_retries=0,
    )
    assert isinstance(person, Person)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"extra_body": {"functions": [{"name": "f"}]}}, "functions"),
    ],
)
def test_tool_fields_that_cannot_be_met_are_refused_by_name(
    openai_client: OpenAI, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnprocessableEntityError, match=named):
        _create(openai_client, max_tokens=4, **fields)
