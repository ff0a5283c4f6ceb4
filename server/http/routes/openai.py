"""The OpenAI-compatible surface: chat completions, completions, models."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel

from server.catalog import ModelCatalog
from server.generation import GenerationRequest, GenerationService, PreparedRequest
from server.http.schemas import ChatCompletionRequest, CompletionRequest
from server.http.sse import event_stream
from server.http.state import get_catalog, get_generation

router = APIRouter(prefix="/v1", tags=["openai"])

Generation = Annotated[GenerationService, Depends(get_generation)]
Catalog = Annotated[ModelCatalog, Depends(get_catalog)]

FinishReason = Literal["stop", "length"]


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
    body: ChatCompletionRequest, generation: Generation
) -> ChatCompletion | StreamingResponse:
    prepared = await generation.prepare(
        GenerationRequest(
            model=body.model,
            messages=[m.as_dict() for m in body.messages],
            max_tokens=body.token_limit(),
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            json_schema=body.output_schema(),
            route="chat.completions",
        )
    )
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(_chat_chunks(generation, prepared, request_id, created, include_usage))
    result = await generation.complete(prepared, request_id)
    return ChatCompletion(
        id=request_id,
        object="chat.completion",
        created=created,
        model=result.model.name,
        choices=[
            ChatChoice(
                index=0,
                message=ChatCompletionMessage(role="assistant", content=result.text),
                finish_reason=_finish_reason(result.finish_reason),
            )
        ],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
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

    def chunk(delta: ChoiceDelta, finish_reason: FinishReason | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=request_id,
            object="chat.completion.chunk",
            created=created,
            model=prepared.model.name,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
        )

    yield chunk(ChoiceDelta(role="assistant", content=""))
    usage = _usage(len(prepared.prompt_token_ids), 0)
    async for step in generation.stream(prepared, request_id):
        usage = _usage(step.prompt_tokens, step.completion_tokens)
        if step.text or step.finish_reason:
            finish = _finish_reason(step.finish_reason) if step.finish_reason else None
            yield chunk(ChoiceDelta(content=step.text), finish)
    if include_usage:
        yield ChatCompletionChunk(
            id=request_id,
            object="chat.completion.chunk",
            created=created,
            model=prepared.model.name,
            choices=[],
            usage=usage,
        )


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, generation: Generation
) -> Completion | StreamingResponse:
    prepared = await generation.prepare(
        GenerationRequest(
            model=body.model,
            prompt=body.prompt_text(),
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            route="completions",
        )
    )
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        return event_stream(_completion_chunks(generation, prepared, request_id, created))
    result = await generation.complete(prepared, request_id)
    return _completion(
        request_id,
        created,
        result.model.name,
        result.text,
        result.finish_reason,
        _usage(result.prompt_tokens, result.completion_tokens),
    )


def _completion(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: CompletionUsage | None,
) -> Completion:
    return Completion(
        id=request_id,
        object="text_completion",
        created=created,
        model=model,
        # Built without validation: a streamed chunk's finish_reason is null until the
        # last one, which the SDK reads fine but its model does not declare.
        choices=[
            CompletionChoice.model_construct(
                index=0,
                text=text,
                logprobs=None,
                finish_reason=_finish_reason(finish_reason) if finish_reason else None,
            )
        ],
        usage=usage,
    )


async def _completion_chunks(
    generation: GenerationService, prepared: PreparedRequest, request_id: str, created: int
) -> AsyncIterator[BaseModel]:
    async for step in generation.stream(prepared, request_id):
        if step.text or step.finish_reason:
            yield _completion(
                request_id, created, prepared.model.name, step.text, step.finish_reason, None
            )


@router.get("/models")
async def list_models(catalog: Catalog) -> dict[str, Any]:
    """The base model and every adapter being served."""
    created = int(time.time())
    models = await asyncio.to_thread(catalog.list_models)  # registry reads
    data = [Model(id=m.name, created=created, object="model", owned_by="hotswap") for m in models]
    return {"object": "list", "data": [m.model_dump(exclude_none=True) for m in data]}
