"""The one table from hotswap's exceptions to gRPC status codes (HTTP maps the same classes
to HTTP statuses in `server/http/errors.py`)."""

from __future__ import annotations

import grpc

from adapters.errors import AdapterConflict, AdapterError, AdapterNotFound, AdapterRejected
from server.auth import AuthError
from server.errors import (
    EngineUnavailable,
    HotswapError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PromptTooLong,
    QueueFull,
)

# Looked up along the exception's class hierarchy, so the most specific entry wins.
STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    AdapterNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PromptTooLong: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    AdapterRejected: grpc.StatusCode.INVALID_ARGUMENT,
    AdapterError: grpc.StatusCode.INVALID_ARGUMENT,
    AdapterConflict: grpc.StatusCode.FAILED_PRECONDITION,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineUnavailable: grpc.StatusCode.UNAVAILABLE,
    HotswapError: grpc.StatusCode.INTERNAL,
}

# AuthError carries its HTTP status: 401 (no or unknown key) or 403 (the key's role).
AUTH_CODES: dict[int, grpc.StatusCode] = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
}


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message for one of hotswap's exceptions; None for any other."""
    if isinstance(exc, AuthError):
        return AUTH_CODES.get(exc.status, grpc.StatusCode.UNAUTHENTICATED), exc.message
    message = exc.message if isinstance(exc, HotswapError) else str(exc)
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code, message
    return None
