"""Per-adapter figures as JSON for scripts: `GET /v1/adapters/{name}/stats`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from server.http.state import get_state
from server.metrics.stats import AdapterStats, adapter_stats
from server.state import ServerState

router = APIRouter(prefix="/v1/adapters", tags=["stats"])


@router.get("/{name}/stats")
async def stats(name: str, state: Annotated[ServerState, Depends(get_state)]) -> AdapterStats:
    """Validity, label counts and drift of one adapter (the figures /metrics exports)."""
    await state.adapters.get(name)  # 404 for an unknown adapter
    return adapter_stats(name, state.labels)
