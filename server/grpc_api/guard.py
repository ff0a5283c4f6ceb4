"""What every hotswap RPC does around its body: check the API key's role, find the running
server's state, and turn an exception into a gRPC status (via `status.STATUS_CODES`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from server.auth import KeyRing, Role
from server.errors import EngineUnavailable, InternalError, InvalidRequest
from server.grpc_api.status import status_of
from server.request_log import REQUEST_ID_HEADER, current_or_new, request_id
from server.state import ServerState

logger = logging.getLogger(__name__)

StateGetter = Callable[[], ServerState | None]
_ROLE = "__hotswap_role__"


class UndecodableRequest:
    """Stands for a request message protobuf could not decode (malformed, or nested deeper
    than protobuf's recursion limit): the server's deserializer returns it instead of raising,
    which grpc would answer UNKNOWN, and `guarded` answers it INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class GuardedServicer:
    """Base of hotswap's servicers: the keys to check and where the server's state is."""

    def __init__(self, keys: KeyRing, state: StateGetter) -> None:
        self._keys = keys
        self._state = state

    def ready(self) -> ServerState:
        """The server's state once the engine serves; EngineUnavailable before."""
        state = self._state()
        if state is None or not state.engine.ready:
            raise EngineUnavailable(
                "The engine is starting; retry when the health service reports SERVING."
            )
        return state


S = TypeVar("S", bound=GuardedServicer)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[S, Req, Any], Awaitable[Resp]]


def guarded(role: Role) -> Callable[[Method[S, Req, Resp]], Method[S, Req, Resp]]:
    """Decorate an async servicer method: the caller's key must hold `role` (checked first by
    the server's `KeyInterceptor`, before the message is read, again here), and hotswap's
    exceptions end the call with their status code and message; any other is logged with the
    call's request id (`x-request-id` metadata, or a new one) and ends it INTERNAL with no
    internal text. Cancellation (the client left, the deadline passed) is not caught: it
    propagates and closes the engine stream."""

    def decorate(method: Method[S, Req, Resp]) -> Method[S, Req, Resp]:
        @functools.wraps(method)
        async def handler(self: S, request: Req, context: Any) -> Resp:
            metadata = context.invocation_metadata()
            token = request_id.set(current_or_new(metadata_value(metadata, REQUEST_ID_HEADER)))
            try:
                self._keys.check(metadata_value(metadata, "authorization"), role)
                if isinstance(request, UndecodableRequest):
                    raise InvalidRequest(
                        f"The request message cannot be decoded: {request.reason} (is it "
                        "malformed, or nested deeper than protobuf's limit of 100?)"
                    )
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                status = status_of(exc)
                if status is None:
                    logger.exception("Unexpected error in %s", method.__name__)
                    status = (grpc.StatusCode.INTERNAL, InternalError(request_id.get()).message)
                await context.abort(*status)
                raise  # unreachable: abort raises
            finally:
                request_id.reset(token)

        setattr(handler, _ROLE, role)
        return handler

    return decorate


def required_role(method: Callable[..., Any]) -> Role | None:
    """The role a `guarded` method needs; None for any other."""
    role: Role | None = getattr(method, _ROLE, None)
    return role


def metadata_value(metadata: Iterable[tuple[str, Any]] | None, name: str) -> str | None:
    """The value of one metadata key of a call (`authorization`: "Bearer <key>"), if sent."""
    for key, value in metadata or ():
        if key == name:
            return str(value)
    return None
