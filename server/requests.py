"""Request handling shared by the HTTP and gRPC APIs: the task call's mapping onto the
domain request, and the capped copy of an uploaded archive to disk."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.errors import InvalidRequest, PayloadTooLarge
from server.generation import GenerationRequest
from server.task_request import GenerateRequest, logprobs_count


def parse_generate(fields: Mapping[str, Any]) -> GenerateRequest:
    """Validate the task call's fields (`/v1/generate`'s body) with the HTTP API's rules."""
    try:
        return GenerateRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from exc


def validation_message(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line: `field: problem; ...`. FastAPI's leading `body` location
    is left out, so an HTTP body and a gRPC message with the same fault read the same."""
    parts = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if loc[:1] == ["body"]:
            loc = loc[1:]
        parts.append(f"{'.'.join(str(part) for part in loc) or 'request'}: {error['msg']}")
    return "; ".join(parts)


def generation_request(body: GenerateRequest, protocol: str) -> GenerationRequest:
    """The task call as a domain request: text is framed by the adapter's task, messages by
    the chat template. `protocol` ("http" or "grpc") labels its metrics."""
    return GenerationRequest(
        model=body.adapter,
        task_input=body.input if isinstance(body.input, str) else None,
        messages=None if isinstance(body.input, str) else [m.as_dict() for m in body.input],
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        json_schema=body.json_schema,
        n=body.n,
        logprobs=logprobs_count(body.logprobs, body.top_logprobs),
        top_labels=body.top_labels,
        abstain_below=body.abstain_below,
        protocol=protocol,
        route="generate",
    )


async def save_capped(chunks: AsyncIterable[bytes], target: Path, limit: int) -> int:
    """Write an upload to `target` a chunk at a time, refusing it past `limit` bytes or
    empty; returns the bytes written."""
    written = 0
    with target.open("wb") as out:
        async for chunk in chunks:
            written += len(chunk)
            if written > limit:
                raise PayloadTooLarge(f"The archive is larger than the limit of {limit} bytes.")
            out.write(chunk)
    if written == 0:
        raise InvalidRequest("The uploaded file is empty.")
    return written
