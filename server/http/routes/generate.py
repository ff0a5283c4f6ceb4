"""The task call: `POST /v1/generate`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from server.generation import GenerationResult, GenerationService, version_headers
from server.http.logprobs import chat_logprobs
from server.http.schemas import (
    AdapterRef,
    GenerateChoice,
    GenerateResponse,
    LabelProbability,
    Usage,
)
from server.http.sse import grammar_headers
from server.http.state import get_generation
from server.requests import generation_request
from server.task_request import GenerateRequest

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate")
async def generate(
    body: GenerateRequest,
    generation: Annotated[GenerationService, Depends(get_generation)],
    response: Response,
) -> GenerateResponse:
    """Run one input through an adapter (or the base). Text input is framed by the adapter's
    task (system message, template) and constrained by its schema unless `schema` is given.
    The top-level fields are the first choice's; `choices` holds all `n`."""
    prepared = await generation.prepare(generation_request(body, protocol="http"))
    results = await generation.complete(prepared, f"gen-{uuid.uuid4().hex}")
    response.headers.update(
        grammar_headers(prepared.grammar_engine) | version_headers(results[0].model)
    )
    choices = [_choice(result, body.logprobs) for result in results]
    prompt_tokens = results[0].prompt_tokens
    completion_tokens = sum(result.completion_tokens for result in results)
    return GenerateResponse(
        **choices[0].model_dump(),
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        adapter=AdapterRef(name=prepared.model.name, version=prepared.model.version),
        grammar_engine=prepared.grammar_engine,
    )


def _choice(result: GenerationResult, logprobs: bool) -> GenerateChoice:
    label = result.label
    return GenerateChoice(
        index=result.index,
        text=result.text,
        output=result.output,
        valid=result.valid,
        finish_reason=result.finish_reason,
        logprobs=chat_logprobs(result.logprobs) if logprobs else None,
        confidence=label.confidence if label else None,
        top_labels=[LabelProbability(label=n, probability=p) for n, p in label.top_labels]
        if label
        else None,
        abstained=label.abstained if label else None,
        label_probabilities=None
        if result.label_set is None
        else [LabelProbability(label=n, probability=p) for n, p in result.label_set.probabilities],
        empty_set_probability=None if result.label_set is None else result.label_set.empty,
    )
