"""The OpenAI-compatible surface: chat completions, completions, models."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion import ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCallUnion
from openai.types.completion_choice import Logprobs
from pydantic import BaseModel

from server.catalog import ModelCatalog
from server.engine import Chunk
from server.generation import (
    GenerationRequest,
    GenerationResult,
    GenerationService,
    PreparedRequest,
    version_headers,
)
from server.http.logprobs import chat_logprobs, completion_logprobs
from server.http.schemas import ChatCompletionRequest, CompletionRequest
from server.http.sse import event_stream, grammar_headers
from server.http.state import get_catalog, get_generation
from server.stream_merge import merge
from server.tool_calls.runner import PreparedToolChat, ToolCallsAnswer, ToolChat
from server.tool_calls.spec import ToolPlan

router = APIRouter(prefix="/v1", tags=["openai"])

Generation = Annotated[GenerationService, Depends(get_generation)]
Catalog = Annotated[ModelCatalog, Depends(get_catalog)]

FinishReason = Literal["stop", "length"]
ToolFinishReason = Literal["stop", "length", "tool_calls"]


def _finish_reason(reason: str | None) -> FinishReason:
    """vLLM's reasons mapped onto OpenAI's (an aborted request reads as `stop`)."""
    return "length" if reason == "length" else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, generation: Generation, response: Response
) -> ChatCompletion | StreamingResponse:
    """Chat; under a JSON Schema, `json_object` or tools, the `x-hotswap-grammar-engine`
    header names the grammar engine that decoded the answer. For an adapter, the
    `x-hotswap-adapter-version` header names the version that answered (`name@version`)."""
    request = GenerationRequest(
        model=body.model,
        messages=[m.as_dict() for m in body.messages],
        max_tokens=body.token_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_list(),
        json_schema=body.output_schema(),
        json_object=body.json_object(),
        n=body.n,
        logprobs=body.logprobs_count(),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=body.bias(),
        route="chat.completions",
    )
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    plan = body.tool_plan()
    if plan is not None:
        tool_chat = ToolChat(generation)
        return await _tool_chat(body, tool_chat, request, plan, request_id, created, response)
    prepared = await generation.prepare(request)
    headers = grammar_headers(prepared.grammar_engine) | version_headers(prepared.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chat_chunks(generation, prepared, request_id, created, include_usage)
        return event_stream(chunks, headers)
    results = await generation.complete(prepared, request_id)
    response.headers.update(headers)
    with_logprobs = prepared.sampling.logprobs is not None
    return ChatCompletion(
        id=request_id,
        object="chat.completion",
        created=created,
        model=prepared.model.name,
        choices=[
            ChatChoice(
                index=result.index,
                message=ChatCompletionMessage(role="assistant", content=result.text),
                finish_reason=_finish_reason(result.finish_reason),
                logprobs=(
                    ChoiceLogprobs(content=chat_logprobs(result.logprobs))
                    if with_logprobs
                    else None
                ),
            )
            for result in results
        ],
        usage=_total_usage([results]),
    )


def _total_usage(runs: list[list[GenerationResult]]) -> CompletionUsage:
    """Usage of a call: each prompt once, every choice's completion."""
    return _usage(
        sum(results[0].prompt_tokens for results in runs),
        sum(result.completion_tokens for results in runs for result in results),
    )


async def _chat_chunks(
    generation: GenerationService,
    prepared: PreparedRequest,
    request_id: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[BaseModel]:
    """Streamed chat chunks. Under a JSON Schema the document is validated once it is whole:
    one that fails the schema ends the stream with an error event (`schema_violation`) before
    `[DONE]`, since text already sent cannot be generated again."""

    def chunk(
        index: int,
        delta: ChoiceDelta,
        finish_reason: FinishReason | None = None,
        logprobs: ChunkLogprobs | None = None,
    ) -> ChatCompletionChunk:
        choice = ChunkChoice(
            index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs
        )
        return ChatCompletionChunk(
            id=request_id,
            object="chat.completion.chunk",
            created=created,
            model=prepared.model.name,
            choices=[choice],
        )

    for index in range(prepared.sampling.n):
        yield chunk(index, ChoiceDelta(role="assistant", content=""))
    with_logprobs = prepared.sampling.logprobs is not None
    results: list[GenerationResult] = []
    async for step in generation.stream(prepared, request_id, results):
        if _moved(step):
            finish = _finish_reason(step.finish_reason) if step.finish_reason else None
            logprobs = (
                ChunkLogprobs(content=chat_logprobs(step.logprobs)) if with_logprobs else None
            )
            yield chunk(step.index, ChoiceDelta(content=step.text), finish, logprobs)
    if include_usage:
        yield _usage_chunk(request_id, created, prepared.model.name, _total_usage([results]))


def _usage_chunk(
    request_id: str, created: int, model: str, usage: CompletionUsage
) -> ChatCompletionChunk:
    """The last chunk of a stream that asked for `include_usage`: no choices, the usage."""
    return ChatCompletionChunk(
        id=request_id,
        object="chat.completion.chunk",
        created=created,
        model=model,
        choices=[],
        usage=usage,
    )


def _moved(step: Chunk) -> bool:
    """A step worth a chunk: new text, new tokens (a token can add no text yet) or the end."""
    return bool(step.text or step.logprobs or step.finish_reason)


async def _tool_chat(
    body: ChatCompletionRequest,
    tool_chat: ToolChat,
    request: GenerationRequest,
    plan: ToolPlan,
    request_id: str,
    created: int,
    response: Response,
) -> ChatCompletion | StreamingResponse:
    """A chat completion whose answer may be tool calls (`server.tool_calls`)."""
    prepared = await tool_chat.prepare(request, plan)
    headers = grammar_headers(prepared.call.grammar_engine)  # the engine a call is decoded by
    headers |= version_headers(prepared.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _tool_chat_chunks(tool_chat, prepared, request_id, created, include_usage)
        return event_stream(chunks, headers)
    answer = await tool_chat.complete(prepared, request_id)
    response.headers.update(headers)
    calls: list[ChatCompletionMessageToolCallUnion] = [
        ChatCompletionMessageFunctionToolCall(
            id=call.id, type="function", function=Function(name=call.name, arguments=call.arguments)
        )
        for call in answer.calls
    ]
    return ChatCompletion(
        id=request_id,
        object="chat.completion",
        created=created,
        model=answer.model.name,
        choices=[
            ChatChoice(
                index=0,
                message=ChatCompletionMessage(
                    role="assistant", content=answer.text, tool_calls=calls or None
                ),
                finish_reason="tool_calls" if calls else _finish_reason(answer.finish_reason),
            )
        ],
        usage=_usage(answer.prompt_tokens, answer.completion_tokens),
    )


async def _tool_chat_chunks(
    tool_chat: ToolChat,
    prepared: PreparedToolChat,
    request_id: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[BaseModel]:
    """Streamed chunks of an answer that may be tool calls: text as it comes, or each call
    once validated (its id, type and name, then its arguments), then `tool_calls`."""

    def chunk(delta: ChoiceDelta, finish: ToolFinishReason | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=request_id,
            object="chat.completion.chunk",
            created=created,
            model=prepared.model.name,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )

    yield chunk(ChoiceDelta(role="assistant", content=""))
    usage = _usage(len(prepared.call.prompt_token_ids), 0)
    async for step in tool_chat.stream(prepared, request_id):
        usage = _usage(step.prompt_tokens, step.completion_tokens)
        if isinstance(step, ToolCallsAnswer):
            for index, call in enumerate(step.calls):
                head = ChoiceDeltaToolCallFunction(name=call.name, arguments="")
                yield chunk(
                    ChoiceDelta(
                        tool_calls=[
                            ChoiceDeltaToolCall(
                                index=index, id=call.id, type="function", function=head
                            )
                        ]
                    )
                )
                arguments = ChoiceDeltaToolCallFunction(arguments=call.arguments)
                yield chunk(
                    ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=index, function=arguments)])
                )
            yield chunk(ChoiceDelta(), "tool_calls")
        elif step.text or step.finish_reason:
            finish = _finish_reason(step.finish_reason) if step.finish_reason else None
            yield chunk(ChoiceDelta(content=step.text), finish)
    if include_usage:
        yield _usage_chunk(request_id, created, prepared.model.name, usage)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, generation: Generation, response: Response
) -> Completion | StreamingResponse:
    """Each prompt gets `n` choices; choice `i` of prompt `p` has index `p * n + i` (as
    vLLM numbers them). For an adapter, the `x-hotswap-adapter-version` header names the
    version that answered (the prompts of one call are routed alike)."""
    prompts = body.prompts()
    all_prepared = await generation.prepare_all(
        [
            GenerationRequest(
                model=body.model,
                prompt=prompt if isinstance(prompt, str) else None,
                prompt_token_ids=None if isinstance(prompt, str) else prompt,
                max_tokens=body.max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
                stop=body.stop_list(),
                n=body.n,
                logprobs=body.logprobs,
                presence_penalty=body.presence_penalty or 0.0,
                frequency_penalty=body.frequency_penalty or 0.0,
                logit_bias=body.bias(),
                route="completions",
            )
            for prompt in prompts
        ]
    )
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = all_prepared[0].model.name
    headers = version_headers(all_prepared[0].model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _completion_chunks(
            generation, all_prepared, request_id, created, model, include_usage
        )
        return event_stream(chunks, headers)
    runs = await asyncio.gather(
        *(
            generation.complete(prepared, f"{request_id}-{position}")
            for position, prepared in enumerate(all_prepared)
        )
    )
    response.headers.update(headers)
    with_logprobs = body.logprobs is not None
    choices = [
        _completion_choice(
            position * body.n + result.index,
            result.text,
            result.finish_reason,
            completion_logprobs(result.logprobs) if with_logprobs else None,
        )
        for position, results in enumerate(runs)
        for result in results
    ]
    return _completion(request_id, created, model, choices, _total_usage(runs))


def _completion(
    request_id: str,
    created: int,
    model: str,
    choices: list[CompletionChoice],
    usage: CompletionUsage | None,
) -> Completion:
    return Completion(
        id=request_id,
        object="text_completion",
        created=created,
        model=model,
        choices=choices,
        usage=usage,
    )


def _completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: Logprobs | None
) -> CompletionChoice:
    # Built without validation: a streamed chunk's finish_reason is null until the last one,
    # which the SDK reads fine but its model does not declare.
    return CompletionChoice.model_construct(
        index=index,
        text=text,
        logprobs=logprobs,
        finish_reason=_finish_reason(finish_reason) if finish_reason else None,
    )


async def _completion_chunks(
    generation: GenerationService,
    all_prepared: list[PreparedRequest],
    request_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[BaseModel]:
    """Streamed completion chunks of every prompt's choices, as they come."""
    runs: list[list[GenerationResult]] = [[] for _ in all_prepared]
    streams = [
        generation.stream(prepared, f"{request_id}-{position}", runs[position])
        for position, prepared in enumerate(all_prepared)
    ]
    offsets: dict[int, int] = {}  # choice index -> characters of its text sent so far
    async with aclosing(merge(streams)) as steps:
        async for position, step in steps:
            if not _moved(step):
                continue
            index = position * all_prepared[position].sampling.n + step.index
            logprobs = None
            if all_prepared[position].sampling.logprobs is not None:
                logprobs = completion_logprobs(step.logprobs, offsets.get(index, 0))
            offsets[index] = offsets.get(index, 0) + len(step.text)
            choice = _completion_choice(index, step.text, step.finish_reason, logprobs)
            yield _completion(request_id, created, model, [choice], None)
    if include_usage:
        yield _completion(request_id, created, model, [], _total_usage(runs))


@router.get("/models")
async def list_models(catalog: Catalog) -> dict[str, Any]:
    """The base model and every adapter being served."""
    created = int(time.time())
    models = await asyncio.to_thread(catalog.list_models)  # registry reads
    data = [Model(id=m.name, created=created, object="model", owned_by="hotswap") for m in models]
    return {"object": "list", "data": [m.model_dump(exclude_none=True) for m in data]}
