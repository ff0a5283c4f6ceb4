"""Errors a request can meet, each with the HTTP status it maps to and a message a user
can act on. gRPC maps the same classes to its status codes."""

from __future__ import annotations


class HotswapError(Exception):
    """Base class: `status` is the HTTP status, `code` a stable machine-readable name."""

    status: int = 500
    code: str = "internal_error"
    retry_after_s: int | None = None  # sent as `Retry-After` when set

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(HotswapError):
    status = 422
    code = "invalid_request"


class ModelNotFound(HotswapError):
    status = 404
    code = "model_not_found"


class PromptTooLong(HotswapError):
    status = 400
    code = "context_length_exceeded"


class EngineUnavailable(HotswapError):
    status = 503
    code = "engine_unavailable"
    retry_after_s = 5


class PayloadTooLarge(HotswapError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(HotswapError):
    status = 415
    code = "unsupported_media_type"


class ForeignCaller(HotswapError):
    """A keyless server called through a non-loopback `Host` or from a web page's `Origin`."""

    status = 403
    code = "forbidden"


class QueueFull(HotswapError):
    status = 429
    code = "queue_full"


class InternalError(HotswapError):
    """A fault nothing else handled: the message gives the caller only the request id to look
    up in the server log, never internal text."""

    status = 500
    code = "internal_error"

    def __init__(self, request_id: str | None) -> None:
        super().__init__(f"Internal error; see the server log (request id {request_id}).")
