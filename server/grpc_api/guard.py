"""What every hotswap RPC does around its body: check the API key's role, find the running
server's state, and turn an exception into a gRPC status (via `status.STATUS_CODES`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.auth import KeyRing, Role
from server.errors import EngineUnavailable
from server.grpc_api.status import status_of
from server.http.state import ServerState

logger = logging.getLogger(__name__)

StateGetter = Callable[[], ServerState | None]


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
    """Decorate an async servicer method: the caller's key must hold `role`, and hotswap's
    exceptions end the call with their status code and message. Cancellation (the client
    left, the deadline passed) is not caught: it propagates and closes the engine stream."""

    def decorate(method: Method[S, Req, Resp]) -> Method[S, Req, Resp]:
        @functools.wraps(method)
        async def handler(self: S, request: Req, context: Any) -> Resp:
            try:
                self._keys.check(authorization(context), role)
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                status = status_of(exc)
                if status is None:
                    logger.exception("Unexpected error in %s", method.__name__)
                    status = (grpc.StatusCode.INTERNAL, "Internal error; see the server log.")
                await context.abort(*status)
                raise  # unreachable: abort raises

        return handler

    return decorate


def authorization(context: Any) -> str | None:
    """The `authorization` metadata ("Bearer <key>") of a call, if sent."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None
