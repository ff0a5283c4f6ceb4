"""Chat completions with tools: a call, when one is made, is decoded under the plan's schema
and validated like any `response_format` document (admission, bounded retries), so its
arguments are valid for the function's `parameters`.

`tool_choice: auto` runs twice at most: a free answer with the tools in the prompt, then,
when that answer opens a tool call (`prompt.CALL_MARKERS`), the constrained call from the
same prompt. Usage counts the run whose answer is returned."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from server.catalog import ServedModel
from server.engine import Chunk
from server.generation import GenerationRequest, GenerationService, PreparedRequest
from server.schema_policy import SchemaRefused
from server.tool_calls.prompt import may_open_tool_call, opens_tool_call
from server.tool_calls.spec import ToolCall, ToolPlan, parse_calls


@dataclass(frozen=True)
class PreparedToolChat:
    """Both runs admitted before any work: `call` under the plan's schema, `free` (auto only)
    without it."""

    plan: ToolPlan
    call: PreparedRequest
    free: PreparedRequest | None

    @property
    def model(self) -> ServedModel:
        return self.call.model


@dataclass(frozen=True)
class ToolCallsAnswer:
    """An answer that is tool calls."""

    calls: list[ToolCall]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ChatAnswer:
    """A whole answer: text, or tool calls (`finish_reason` `tool_calls`)."""

    model: ServedModel
    text: str | None
    calls: list[ToolCall]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class ToolChat:
    """Runs chat requests that offer tools on a `GenerationService`."""

    def __init__(self, generation: GenerationService) -> None:
        self._generation = generation

    async def prepare(self, request: GenerationRequest, plan: ToolPlan) -> PreparedToolChat:
        """Admit the request: its tools in the prompt, and the call schema (a refusal names
        `tools`). Raises what `GenerationService.prepare` raises."""
        framed = dataclasses.replace(request, tools=plan)
        try:
            call = await self._generation.prepare(
                dataclasses.replace(framed, json_schema=plan.decoding_schema())
            )
        except SchemaRefused as exc:
            raise SchemaRefused(f"`tools` (a function's `parameters`): {exc.message}") from exc
        free = None if plan.forced else await self._generation.prepare(framed)
        return PreparedToolChat(plan, call, free)

    async def complete(self, prepared: PreparedToolChat, request_id: str) -> ChatAnswer:
        if prepared.free is not None:
            (text,) = await self._generation.complete(prepared.free, request_id)
            if not opens_tool_call(text.text):
                return ChatAnswer(
                    text.model,
                    text.text,
                    [],
                    text.finish_reason,
                    text.prompt_tokens,
                    text.completion_tokens,
                )
        calls = await self._calls(prepared, request_id)
        return ChatAnswer(
            prepared.model,
            None,
            calls.calls,
            "tool_calls",
            calls.prompt_tokens,
            calls.completion_tokens,
        )

    async def stream(
        self, prepared: PreparedToolChat, request_id: str
    ) -> AsyncIterator[Chunk | ToolCallsAnswer]:
        """Text chunks of a free answer, or one `ToolCallsAnswer` once the call is validated.
        Under `auto` the free answer's opening is held back until it cannot open a call; one
        that does is aborted and the call generated."""
        if prepared.free is not None:
            held: str | None = ""
            opened = False
            async with aclosing(self._generation.stream(prepared.free, request_id)) as chunks:
                async for chunk in chunks:
                    if held is None:
                        yield chunk
                        continue
                    held += chunk.text
                    if opens_tool_call(held):
                        opened = True
                        break
                    if chunk.finish_reason or not may_open_tool_call(held):
                        yield dataclasses.replace(chunk, text=held)
                        held = None
            if not opened:
                return
        yield await self._calls(prepared, request_id)

    async def _calls(self, prepared: PreparedToolChat, request_id: str) -> ToolCallsAnswer:
        run_id = request_id if prepared.free is None else f"{request_id}-call"
        (result,) = await self._generation.complete(prepared.call, run_id)
        return ToolCallsAnswer(
            parse_calls(result.output), result.prompt_tokens, result.completion_tokens
        )
