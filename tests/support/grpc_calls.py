"""Reading a gRPC call's outcome in tests."""

from __future__ import annotations

from typing import Any

import grpc


async def call_status(call: Any) -> tuple[grpc.StatusCode, str]:
    """Await `call`; its status code and details (OK and "" when it succeeded)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
