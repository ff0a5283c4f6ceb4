"""The tools of a request, their limits, and the JSON Schema a tool call is decoded under."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from adapters.json_input import json_problem

MAX_TOOLS = 128  # as OpenAI
MAX_DESCRIPTION_CHARS = 1024
MAX_PARALLEL_TOOL_CALLS = 4
"""The most calls one answer holds when `parallel_tool_calls` is true (the array's maxItems)."""
MAX_TOOL_CALL_ID_CHARS = 128
MAX_HISTORY_TOOL_CALLS = 128
"""The most tool calls one assistant message of the history holds."""

FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""A function without `parameters` takes none (as OpenAI)."""


class FunctionDefinition(BaseModel):
    name: FunctionName
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON Schema of type object; omitted: no arguments."
    )
    strict: bool | None = Field(
        default=None, description="Accepted either way: arguments are always validated."
    )

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Nesting bounded before anything walks it (the schema admission has its own
        limits, but the call schema is built first)."""
        problem = None if value is None else json_problem(value)
        if problem is not None:
            raise ValueError(f"`parameters` {problem}")
        return value

    def parameters_schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters is not None else EMPTY_PARAMETERS


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)]


class HistoryFunctionCall(BaseModel):
    name: Annotated[str, StringConstraints(max_length=64)]
    arguments: str = Field(description="The call's arguments, as a JSON text.")


class HistoryToolCall(BaseModel):
    """A tool call of an assistant message in the conversation sent back."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(max_length=MAX_TOOL_CALL_ID_CHARS)]
    type: Literal["function"] = "function"
    function: HistoryFunctionCall

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": self.function.model_dump()}


HistoryToolCalls = Annotated[list[HistoryToolCall], Field(max_length=MAX_HISTORY_TOOL_CALLS)]


@dataclass(frozen=True)
class ToolCall:
    """One call of an answer: `arguments` is the JSON text of an object valid for the
    function's `parameters`."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolPlan:
    """Tools the model is offered, and whether it must call one. `choice` is `auto`,
    `required` or the name of the function it must call."""

    tools: tuple[FunctionDefinition, ...]
    choice: str
    parallel: bool

    @property
    def forced(self) -> bool:
        """A call is required: the answer is decoded under `decoding_schema()` at once."""
        return self.choice != "auto"

    @property
    def named(self) -> FunctionDefinition | None:
        return next((t for t in self.tools if t.name == self.choice), None)

    def template_tools(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's shape, as chat templates with tool support take them."""
        return [
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"strict"})}
            for t in self.tools
        ]

    def prompt_chars(self) -> int:
        """Characters the tools add to the prompt (checked against the prompt's limit)."""
        return len(json.dumps(self.template_tools()))

    def decoding_schema(self) -> dict[str, Any]:
        """The JSON Schema of the answer when a call is made: one call object
        `{"name": NAME, "arguments": {...}}` (a named choice, or parallel calls off), else an
        array of 1 to `MAX_PARALLEL_TOOL_CALLS` of them. Each call's arguments are the
        function's `parameters`, inlined (their local `$ref`s moved with them)."""
        named = self.named
        tools = (named,) if named is not None else self.tools
        many = self.parallel and named is None
        root = "#/items" if many else "#"
        if len(tools) == 1:
            call = _call_schema(tools[0], f"{root}/properties/arguments")
        else:
            call = {
                "anyOf": [
                    _call_schema(t, f"{root}/anyOf/{i}/properties/arguments")
                    for i, t in enumerate(tools)
                ]
            }
        if not many:
            return call
        return {"type": "array", "items": call, "minItems": 1, "maxItems": MAX_PARALLEL_TOOL_CALLS}


def plan_tools(
    tools: Sequence[ToolDefinition] | None, choice: ToolChoice | None, parallel: bool | None
) -> ToolPlan | None:
    """The plan of a request, None when no call can be made (no tools, or `tool_choice`
    `none`). Raises ValueError naming the field for a choice the tools cannot meet, repeated
    names and parameters that are not an object schema."""
    if choice is None:
        choice = "auto" if tools else "none"
    name = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if not tools:
        if choice in ("none", "auto"):
            return None
        raise ValueError("`tool_choice` asks for a tool call but `tools` is empty")
    functions = tuple(t.function for t in tools)
    seen: set[str] = set()
    for i, function in enumerate(functions):
        if function.name in seen:
            raise ValueError(f"`tools[{i}].function.name`: {function.name!r} is repeated")
        seen.add(function.name)
        params = function.parameters
        if params is not None and params.get("type") != "object":
            raise ValueError(
                f"`tools[{i}].function.parameters` must be a JSON Schema of type object"
            )
    if name is not None and name not in seen:
        raise ValueError(f"`tool_choice` names the function {name!r}, which `tools` lacks")
    if choice == "none":
        return None
    return ToolPlan(functions, name or str(choice), parallel if parallel is not None else True)


def parse_calls(document: Any) -> list[ToolCall]:
    """The calls of a document valid under `ToolPlan.decoding_schema()`, with fresh ids."""
    calls = document if isinstance(document, list) else [document]
    return [
        ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            name=call["name"],
            arguments=json.dumps(call["arguments"], ensure_ascii=False),
        )
        for call in calls
    ]


def _call_schema(function: FunctionDefinition, pointer: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": function.name},
            "arguments": _relocate(function.parameters_schema(), pointer),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


# Keywords whose values are data, not subschemas: a `$ref` key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
# Keywords whose values map names (any name, `enum` included) to subschemas.
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _relocate(parameters: dict[str, Any], pointer: str) -> dict[str, Any]:
    """`parameters` made to sit at `pointer` of a larger schema: its local `$ref`s (`#...`)
    point inside it there, and its root `$schema`/`$id` are dropped."""
    schema = {k: v for k, v in parameters.items() if k not in ("$schema", "$id")}

    def move(node: Any) -> Any:
        if isinstance(node, list):
            return [move(item) for item in node]
        if not isinstance(node, dict):
            return node
        moved: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                moved[key] = pointer + value[1:]
            elif key in _DATA_KEYWORDS:
                moved[key] = copy.deepcopy(value)
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                moved[key] = {name: move(sub) for name, sub in value.items()}
            else:
                moved[key] = move(value)
        return moved

    result: dict[str, Any] = move(schema)
    return result
