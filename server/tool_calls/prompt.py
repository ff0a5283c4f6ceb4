"""A conversation with tools framed for the model's chat template.

A template with tool support (its source mentions `tools`) gets the tools and the history's
tool calls in the shape Hugging Face templates take. Any other template (the default base
model's among them) gets hotswap's text fallback:

- the tools as a system message (appended to the conversation's own system message):
  `FALLBACK_INTRO`, one JSON line per function (`name`, `description`, `parameters`), then
  `FALLBACK_FORMAT`, and for a required call `Answer now with a function call.` (or
  ``Answer now with a call to the function `NAME`.``);
- an assistant message's tool calls as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
  after its text;
- a `tool` message as a user message `Tool result (id CALL_ID): CONTENT`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.tool_calls.spec import ToolPlan

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FALLBACK_INTRO = (
    "You can call functions. Each one is described by a JSON object with its name, "
    "description and parameters (a JSON Schema):"
)
FALLBACK_FORMAT = (
    f'To call a function, answer with only {CALL_OPEN}{{"name": <function name>, "arguments": '
    f"<arguments as a JSON object>}}{CALL_CLOSE}, once per call. Otherwise answer in text."
)
CALL_MARKERS = (CALL_OPEN, "[TOOL_CALLS]", "<|python_tag|>", '{"name"')
"""Openings that mark an answer under `tool_choice: auto` as a tool call: the fallback's and
those of common templates (Hermes/Qwen, Mistral, Llama 3)."""


class ChatRenderer(Protocol):
    """What framing needs of `server.engine.Engine`."""

    def render_chat(
        self,
        messages: Sequence[Mapping[str, object]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]: ...

    def chat_template_takes_tools(self) -> bool: ...


def opens_tool_call(text: str) -> bool:
    """Whether an answer opens with a tool call marker (leading whitespace aside)."""
    return text.lstrip().startswith(CALL_MARKERS)


def may_open_tool_call(text: str) -> bool:
    """Whether more text could still make `text` open a tool call."""
    start = text.lstrip()
    return any(marker.startswith(start) or start.startswith(marker) for marker in CALL_MARKERS)


def has_tool_turns(messages: Sequence[Mapping[str, object]]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def render_chat(
    engine: ChatRenderer, messages: Sequence[Mapping[str, object]], plan: ToolPlan | None
) -> list[int]:
    """Token ids of the conversation, the tools of `plan` (if any) offered to the model.
    Blocks (CPU): call it from a worker thread."""
    if plan is None and not has_tool_turns(messages):
        return engine.render_chat(messages)
    framed = frame_chat(messages, plan, native=engine.chat_template_takes_tools())
    if framed.tools is None:
        return engine.render_chat(framed.messages)
    return engine.render_chat(framed.messages, framed.tools)


@dataclass(frozen=True)
class FramedChat:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None


def frame_chat(
    messages: Sequence[Mapping[str, object]], plan: ToolPlan | None, native: bool
) -> FramedChat:
    """The messages (and tools) to hand the chat template: as they are for a template with
    tool support (`native`), else in the text fallback."""
    if native:
        return FramedChat(
            [_native_message(m) for m in messages], plan.template_tools() if plan else None
        )
    framed = [_fallback_message(m) for m in messages]
    if plan is not None:
        text = fallback_system_text(plan)
        if framed and framed[0]["role"] == "system":
            framed[0] = {"role": "system", "content": f"{framed[0]['content']}\n\n{text}"}
        else:
            framed.insert(0, {"role": "system", "content": text})
    return FramedChat(framed, None)


def fallback_system_text(plan: ToolPlan) -> str:
    lines = [FALLBACK_INTRO]
    lines += [
        json.dumps(
            {
                "name": t.name,
                "description": t.description or "",
                "parameters": t.parameters_schema(),
            }
        )
        for t in plan.tools
    ]
    lines.append(FALLBACK_FORMAT)
    if plan.named is not None:
        lines.append(f"Answer now with a call to the function `{plan.choice}`.")
    elif plan.forced:
        lines.append("Answer now with a function call.")
    return "\n".join(lines)


def _arguments(text: object) -> Any:
    """A history call's arguments as JSON when they parse, else as sent (also when nested
    too deeply to parse: a client's text, never a 500)."""
    try:
        return json.loads(str(text))
    except (ValueError, RecursionError):
        return text


def _calls(message: Mapping[str, object]) -> list[Mapping[str, Any]]:
    calls = message.get("tool_calls")
    return list(calls) if isinstance(calls, list) else []


def _native_message(message: Mapping[str, object]) -> dict[str, Any]:
    framed = dict(message)
    calls = _calls(message)
    if calls:
        framed["tool_calls"] = [
            {
                **call,
                "function": {
                    "name": call["function"]["name"],
                    "arguments": _arguments(call["function"]["arguments"]),
                },
            }
            for call in calls
        ]
    return framed


def _fallback_message(message: Mapping[str, object]) -> dict[str, Any]:
    role, content = message.get("role"), str(message.get("content") or "")
    if role == "tool":
        return {
            "role": "user",
            "content": f"Tool result (id {message.get('tool_call_id')}): {content}",
        }
    calls = "".join(CALL_OPEN + _call_text(c) + CALL_CLOSE for c in _calls(message))
    return {"role": role, "content": content + calls}


def _call_text(call: Mapping[str, Any]) -> str:
    """A history call as the fallback writes it; its arguments as sent when they do not
    round-trip as JSON (nested too deeply, say)."""
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    try:
        return json.dumps({"name": name, "arguments": _arguments(arguments)})
    except RecursionError:
        return json.dumps({"name": name, "arguments": str(arguments)})
