"""The task call: `POST /v1/generate`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from server.generation import GenerationService
from server.http.schemas import AdapterRef, GenerateResponse, Usage
from server.http.state import get_generation
from server.requests import generation_request
from server.task_request import GenerateRequest

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate")
async def generate(
    body: GenerateRequest,
    generation: Annotated[GenerationService, Depends(get_generation)],
) -> GenerateResponse:
    """Run one input through an adapter (or the base). Text input is framed by the adapter's
    task (system message, template) and constrained by its schema unless `schema` is given."""
    prepared = await generation.prepare(generation_request(body, protocol="http"))
    result = await generation.complete(prepared, f"gen-{uuid.uuid4().hex}")
    return GenerateResponse(
        text=result.text,
        output=result.output,
        valid=result.valid,
        finish_reason=result.finish_reason,
        usage=Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        ),
        adapter=AdapterRef(name=result.model.name, version=result.model.version),
    )
