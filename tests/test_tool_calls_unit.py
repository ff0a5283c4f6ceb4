"""Tool calls without the engine: the plan's limits, the decoding schema (admitted by the
schema bounding and compiled by outlines fast), parsing, the prompt fallback, the runner."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from adapters.json_grammar import schema_regex
from server.errors import PromptTooLong
from server.generation import GenerationRequest
from server.http.schemas import ChatCompletionRequest
from server.structured import prepare_schema
from server.task_request import ChatMessage
from server.tool_calls.prompt import (
    CALL_OPEN,
    frame_chat,
    may_open_tool_call,
    opens_tool_call,
    render_chat,
)
from server.tool_calls.runner import ToolCallsAnswer, ToolChat
from server.tool_calls.spec import (
    MAX_PARALLEL_TOOL_CALLS,
    MAX_TOOLS,
    ToolDefinition,
    ToolPlan,
    parse_calls,
)
from tests.support.fakes import FakeEngine, FakeGuard, service

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
NESTED = {  # pydantic's shape: a nested model behind a local $ref
    "type": "object",
    "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    "properties": {
        "at": {"$ref": "#/$defs/Point"},
        "enum": {"$ref": "#/$defs/Point", "default": {"$ref": "#/kept"}},
    },
    "required": ["at"],
}


def _tool(name: str, parameters: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, **extra}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


TOOLS = [_tool("get_weather", WEATHER, description="Weather now"), _tool("add", ADD)]


def _body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "base", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def _plan(**fields: Any) -> ToolPlan:
    plan = _body(tools=TOOLS, **fields).tool_plan()
    assert plan is not None
    return plan


# -- the plan and its limits --------------------------------------------------------------


def test_no_tools_or_none_choice_makes_no_plan() -> None:
    assert _body().tool_plan() is None
    assert _body(tools=TOOLS, tool_choice="none").tool_plan() is None
    assert _body(tools=[], tool_choice="auto").tool_plan() is None


def test_choice_defaults_to_auto_and_parallel_to_true() -> None:
    plan = _plan()
    assert plan.choice == "auto" and plan.parallel and not plan.forced


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [_tool("x")] * 2}, "tools[1].function.name"),
        ({"tools": [_tool("bad name")]}, "tools.0.function.name"),
        ({"tools": [_tool("x" * 65)]}, "tools.0.function.name"),
        ({"tools": [_tool("x", description="d" * 1025)]}, "tools.0.function.description"),
        ({"tools": [_tool(f"f{i}") for i in range(MAX_TOOLS + 1)]}, "tools"),
        ({"tools": [_tool("x", {"type": "array"})]}, "tools[0].function.parameters"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "zz"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "tools": TOOLS,
                "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
            },
            "response_format",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ],
)
def test_limits_are_refused_naming_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _body(**fields)
    text = str(caught.value)
    assert named in text or named.replace(".", " -> ") in text, text


def test_history_tool_fields_are_checked() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]})
    ChatMessage.model_validate({"role": "tool", "content": "3", "tool_call_id": "call_1"})
    for bad in (
        {"role": "tool", "content": "3"},  # no tool_call_id
        {"role": "user", "content": "x", "tool_calls": [call]},
        {"role": "user", "content": None},
        {"role": "tool", "content": "3", "tool_call_id": "c" * 129},
        {"role": "assistant", "tool_calls": [call] * 129},
    ):
        with pytest.raises(ValidationError):
            ChatMessage.model_validate(bad)


# -- the decoding schema ------------------------------------------------------------------


def _valid(schema: dict[str, Any], document: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(document)


@pytest.mark.parametrize(
    ("fields", "many"),
    [
        ({"tool_choice": "required"}, True),
        ({"tool_choice": "required", "parallel_tool_calls": False}, False),
        ({"tool_choice": {"type": "function", "function": {"name": "add"}}}, False),
        ({"tool_choice": "auto", "parallel_tool_calls": False}, False),
    ],
)
def test_decoding_schema_is_admitted_compiles_fast_and_means_the_parameters(
    fields: dict[str, Any], many: bool
) -> None:
    plan = _plan(**fields)
    schema = plan.decoding_schema()
    start = time.perf_counter()
    prepared = prepare_schema(schema)
    schema_regex(prepared.bounded)
    assert time.perf_counter() - start < 1.0
    add = {"name": "add", "arguments": {"a": 1, "b": 2}}
    weather = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert _valid(schema, [add, weather] if many else add)
    assert not _valid(schema, {"name": "add", "arguments": {"a": "1", "b": 2}})
    assert not _valid(schema, {"name": "nope", "arguments": {}})
    if many:
        assert not _valid(schema, [])
        assert not _valid(schema, [add] * (MAX_PARALLEL_TOOL_CALLS + 1))
    named = plan.named is not None
    assert _valid(schema, weather) is (not many and not named)


def test_local_refs_of_parameters_move_with_them() -> None:
    plan = _body(tools=[_tool("a", NESTED), _tool("b", NESTED)], tool_choice="required").tool_plan()
    assert plan is not None
    schema = plan.decoding_schema()
    prepare_schema(schema)  # the refs resolve
    call = {"name": "b", "arguments": {"at": {"x": 1}}}
    assert _valid(schema, [call]) and not _valid(schema, [{"name": "b", "arguments": {"at": 1}}])
    enum = schema["items"]["anyOf"][0]["properties"]["arguments"]["properties"]["enum"]
    # a property named `enum` is a subschema; a `default` is data, not a reference
    assert enum == {
        "$ref": "#/items/anyOf/0/properties/arguments/$defs/Point",
        "default": {"$ref": "#/kept"},
    }


def test_parameters_omitted_mean_no_arguments() -> None:
    plan = _body(tools=[_tool("ping")], tool_choice="required").tool_plan()
    assert plan is not None
    schema = plan.decoding_schema()
    assert _valid(schema, [{"name": "ping", "arguments": {}}])
    assert "{}" in schema_regex(prepare_schema(schema).bounded).replace("\\", "")


def test_parse_calls_gives_ids_and_json_arguments() -> None:
    calls = parse_calls(
        [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "x", "arguments": {}}]
    )
    assert [c.name for c in calls] == ["add", "x"]
    assert json.loads(calls[0].arguments) == {"a": 1, "b": 2}
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert len(parse_calls({"name": "add", "arguments": {}})) == 1


# -- the prompt ---------------------------------------------------------------------------

HISTORY: list[dict[str, object]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Add 1 and 2."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_7",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
            }
        ],
    },
    {"role": "tool", "content": "3", "tool_call_id": "call_7"},
]


def test_fallback_renders_tools_calls_and_results_as_text() -> None:
    framed = frame_chat(HISTORY, _plan(tool_choice="required"), native=False)
    assert framed.tools is None
    system, _, assistant, tool = framed.messages
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in system["content"] and CALL_OPEN in system["content"]
    assert system["content"].endswith("Answer now with a function call.")
    assert (
        assistant["content"]
        == '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    )
    assert tool == {"role": "user", "content": "Tool result (id call_7): 3"}
    named = frame_chat(
        HISTORY[1:2],
        _plan(tool_choice={"type": "function", "function": {"name": "add"}}),
        native=False,
    )
    assert named.messages[0]["role"] == "system"
    assert named.messages[0]["content"].endswith("call to the function `add`.")


def test_native_templates_get_tools_and_parsed_arguments() -> None:
    framed = frame_chat(HISTORY, _plan(), native=True)
    assert framed.tools is not None and framed.tools[0]["function"]["name"] == "get_weather"
    assert framed.messages[2]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}
    assert framed.messages[3]["role"] == "tool"


class RenderingEngine(FakeEngine):
    """Records what the template was given; `native` says whether it takes tools."""

    def __init__(self, reply: str | Sequence[str], native: bool = False) -> None:
        super().__init__(reply)
        self.native = native
        self.rendered: list[tuple[list[Mapping[str, object]], Any]] = []

    def render_chat(self, messages: Sequence[Mapping[str, object]], tools: Any = None) -> list[int]:
        self.rendered.append((list(messages), tools))
        return super().render_chat(messages)

    def chat_template_takes_tools(self) -> bool:
        return self.native


def test_render_chat_passes_plain_chats_unchanged_and_tools_to_native_templates() -> None:
    engine = RenderingEngine("x", native=True)
    render_chat(engine, HISTORY, _plan())
    _, tools = engine.rendered[-1]
    assert tools[0]["type"] == "function"
    render_chat(engine, HISTORY[:2], None)
    assert engine.rendered[-1] == (HISTORY[:2], None)


def test_auto_markers() -> None:
    assert opens_tool_call('  <tool_call>{"name"') and opens_tool_call('{"name": "add"')
    assert not opens_tool_call("Paris is the capital.")
    assert may_open_tool_call(" <tool") and may_open_tool_call("") and not may_open_tool_call("Pa")


# -- the runner (fake engine) -------------------------------------------------------------


def _service(replies: Sequence[str]) -> tuple[ToolChat, FakeEngine]:
    gen, _ = service(max_model_len=4000, guard=FakeGuard(budget=200))  # calls fit in 200
    engine = RenderingEngine(replies)
    gen._engine = engine  # type: ignore[assignment]
    return ToolChat(gen), engine


def _request() -> GenerationRequest:
    return GenerationRequest(model="base", messages=[{"role": "user", "content": "hi"}])


async def test_required_decodes_under_the_schema_and_answers_calls() -> None:
    chat, engine = _service(['[{"name":"add","arguments":{"a":1,"b":2}}]'])
    plan = _plan(tool_choice="required")
    prepared = await chat.prepare(_request(), plan)
    answer = await chat.complete(prepared, "r")
    assert answer.text is None and answer.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in answer.calls] == [("add", {"a": 1, "b": 2})]
    (_, sampling, _) = engine.seen[0]
    assert sampling.json_schema is not None and sampling.json_schema["type"] == "array"
    assert len(engine.seen) == 1


async def test_auto_answers_text_when_the_model_writes_text() -> None:
    chat, engine = _service(["Hello there"])
    prepared = await chat.prepare(_request(), _plan())
    answer = await chat.complete(prepared, "r")
    assert answer.text == "Hello there" and not answer.calls and len(engine.seen) == 1
    assert engine.seen[0][1].json_schema is None
    chunks = [c async for c in chat.stream(prepared, "s")]
    assert "".join(getattr(c, "text", "") for c in chunks) == "Hello there"


async def test_auto_generates_a_constrained_call_when_the_answer_opens_one() -> None:
    reply = '{"name":"get_weather","arguments":{"city":"Paris"}}'
    chat, engine = _service([f"{CALL_OPEN}{reply}", reply])
    plan = _plan(parallel_tool_calls=False)
    prepared = await chat.prepare(_request(), plan)
    answer = await chat.complete(prepared, "r")
    assert [c.name for c in answer.calls] == ["get_weather"] and len(engine.seen) == 2
    assert engine.seen[1][1].json_schema is not None
    streamed = [c async for c in chat.stream(prepared, "s")]
    assert len(streamed) == 1 and isinstance(streamed[0], ToolCallsAnswer)


async def test_a_refused_parameters_schema_names_tools() -> None:
    chat, _ = _service(["x"])
    bad = _body(tools=[_tool("f", {"type": "object", "properties": {"p": {"$ref": "http://x"}}})])
    plan = bad.tool_plan()
    assert plan is not None
    with pytest.raises(Exception, match="`tools`"):
        await chat.prepare(_request(), plan)


async def test_the_tools_count_against_the_prompt_character_cap() -> None:
    gen, engine = service(max_model_len=30)  # 16 characters a token: 480 characters
    long = _body(tools=[_tool("f", description="d" * 500)], tool_choice="required").tool_plan()
    assert long is not None
    with pytest.raises(PromptTooLong, match="`messages` with `tools`"):
        await ToolChat(gen).prepare(_request(), long)
    assert not engine.seen


def test_history_arguments_nested_too_deeply_are_kept_as_text() -> None:
    """A client's arguments string is parsed to frame the history; one nested past the parser's
    limit is passed on as text, never a 500."""
    deep = "[" * 100_000 + "]" * 100_000
    history: list[dict[str, object]] = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}
            ],
        },
    ]
    for native in (False, True):
        framed = frame_chat(history, None, native=native)
        assert deep in json.dumps(framed.messages)


def test_parameters_nested_past_the_json_limit_are_refused_by_name() -> None:
    deep: dict[str, Any] = {"type": "object"}
    node = deep
    for _ in range(3000):
        node["properties"] = {"a": {"type": "object"}}
        node = node["properties"]["a"]
    with pytest.raises(ValidationError, match="`parameters` nests deeper than the limit"):
        ToolDefinition.model_validate(
            {"type": "function", "function": {"name": "f", "parameters": deep}}
        )
