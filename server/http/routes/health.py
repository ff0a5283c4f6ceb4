"""Probes (public in every mode) and the Prometheus scrape endpoint (behind a key when keys
are set, unless `public_metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server.errors import EngineUnavailable

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once the engine serves; 503 before, and while it is restarted after its core died
    (or for good when the restarts failed: see the log)."""
    state = getattr(request.app.state, "hotswap", None)
    if state is not None and state.engine.ready:
        return JSONResponse({"status": "ready", "base_model": state.engine.base.name})
    return JSONResponse(
        {"status": "starting" if state is None else "unavailable"},
        status_code=503,
        headers={"Retry-After": str(EngineUnavailable.retry_after_s)},
    )


@metrics_router.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format: hotswap_* metrics and vLLM's own engine metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
