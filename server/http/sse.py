"""Server-sent events in the shape OpenAI clients read: `data: <json>` lines, then [DONE]."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.errors import HotswapError, InternalError
from server.generation import GRAMMAR_ENGINE_HEADER
from server.request_log import request_id

logger = logging.getLogger(__name__)


def error_body(exc: HotswapError) -> dict[str, dict[str, str | int]]:
    """The OpenAI error envelope, used by every non-2xx answer and failed stream."""
    return {"error": {"message": exc.message, "type": exc.code, "code": exc.status}}


def retry_headers(exc: HotswapError) -> dict[str, str] | None:
    """`Retry-After` for errors that pass by themselves (the engine restarting)."""
    return None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}


def grammar_headers(grammar_engine: str | None) -> dict[str, str]:
    """The header naming the grammar engine that decoded a constrained answer."""
    return {} if grammar_engine is None else {GRAMMAR_ENGINE_HEADER: grammar_engine}


def event_stream(
    events: AsyncIterator[BaseModel], headers: dict[str, str] | None = None
) -> StreamingResponse:
    """Stream pydantic models as SSE; an error mid-stream becomes a final error event (an
    unexpected one is logged and reads as an internal error naming the request id)."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {event.model_dump_json()}\n\n"
        except HotswapError as exc:
            yield f"data: {json.dumps(error_body(exc))}\n\n"
        except Exception:
            logger.exception("Unhandled error while streaming")
            yield f"data: {json.dumps(error_body(InternalError(request_id.get())))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)
