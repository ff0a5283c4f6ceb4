"""Every error answer of the HTTP API in the OpenAI envelope: the exception handlers, and the
catch-all that turns an unexpected exception into a 500 that names the request id (the
traceback goes to the log, never to the client)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.errors import AdapterConflict, AdapterError, AdapterNotFound
from server.auth import AuthError
from server.errors import HotswapError, InternalError, InvalidRequest
from server.http.sse import error_body, retry_headers
from server.request_log import request_id
from server.requests import validation_message

logger = logging.getLogger(__name__)

_ADAPTER_ERROR_STATUS: dict[type[AdapterError], int] = {
    AdapterNotFound: 404,
    AdapterConflict: 409,
}


def error_response(
    message: str, kind: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """`{"error": {"message", "type", "code"}}` with `status`."""
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def hotswap_response(exc: HotswapError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=retry_headers(exc))


def auth_response(exc: AuthError) -> JSONResponse:
    """401 (with `WWW-Authenticate: Bearer`) or 403."""
    challenge = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.message, "authentication", exc.status, challenge)


def install_error_handlers(app: FastAPI) -> None:
    """Map hotswap's, the registry's and the framework's exceptions to the envelope."""

    @app.exception_handler(HotswapError)
    async def _hotswap_error(_: Request, exc: HotswapError) -> JSONResponse:
        return hotswap_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return hotswap_response(InvalidRequest(validation_message(exc.errors())))

    @app.exception_handler(AdapterError)
    async def _adapter_error(_: Request, exc: AdapterError) -> JSONResponse:
        return error_response(
            str(exc), type(exc).__name__, _ADAPTER_ERROR_STATUS.get(type(exc), 422)
        )

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        """The framework's own answers (404, 405, a body it cannot parse)."""
        kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return error_response(str(exc.detail), kind, exc.status_code, exc.headers)


class CatchAll:
    """ASGI middleware: an exception nothing else handled is logged with its traceback (and,
    inside the request id middleware, the request id) and answered 500 in the envelope with
    no internal text. After the answer has started, the connection is closed instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("Unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                return
            await hotswap_response(InternalError(request_id.get()))(scope, receive, send)
