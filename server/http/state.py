"""What the routes need, built once at start and injected with FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from server.adapter_service import AdapterService
from server.auth import Role
from server.catalog import ModelCatalog
from server.errors import EngineUnavailable
from server.generation import GenerationService
from server.state import ServerState


def get_state(request: Request) -> ServerState:
    state: ServerState | None = getattr(request.app.state, "hotswap", None)
    if state is None or not state.engine.ready:
        raise EngineUnavailable("The engine is starting; retry when /readyz answers 200.")
    return state


def get_generation(state: Annotated[ServerState, Depends(get_state)]) -> GenerationService:
    return state.generation


def get_catalog(state: Annotated[ServerState, Depends(get_state)]) -> ModelCatalog:
    return state.catalog


def get_adapter_service(state: Annotated[ServerState, Depends(get_state)]) -> AdapterService:
    return state.adapters


def documented_key(role: Role) -> Any:
    """The API key as the OpenAPI schema shows it: a bearer scheme named after `role`. It
    checks nothing: the edge (`server.http.edge`) checks the key before the body is read."""
    scheme = HTTPBearer(
        scheme_name=f"{role.value} key",
        description=f"An API key with the '{role.value}' role"
        + (" (or 'admin')." if role is Role.INFER else "."),
        auto_error=False,
    )
    return Security(scheme)
