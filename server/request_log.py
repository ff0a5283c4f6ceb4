"""Structured JSON logs that carry the id of the request being served.

Each HTTP request gets an id (the client's `x-request-id` when it sends a sane one, else a
new one), returned in the `x-request-id` response header and attached to every log line
written while the request runs."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, json_format: bool) -> None:
    """Root logging to stderr, as JSON lines or as plain text."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


async def request_id_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Give the request an id for the logs, and echo it in the response."""
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    current = offered if _CLIENT_ID.fullmatch(offered) else uuid.uuid4().hex
    token = request_id.set(current)
    try:
        response = await call_next(request)
    finally:
        request_id.reset(token)
    response.headers[REQUEST_ID_HEADER] = current
    return response
