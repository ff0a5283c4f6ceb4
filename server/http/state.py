"""What the routes need, built once at start and injected with FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from server.adapter_service import AdapterService
from server.auth import KeyRing, Role
from server.catalog import ModelCatalog
from server.engine import Engine
from server.errors import EngineUnavailable
from server.generation import GenerationService
from server.metrics.labels import LabelTracker


@dataclass
class ServerState:
    engine: Engine
    catalog: ModelCatalog
    generation: GenerationService
    adapters: AdapterService
    labels: LabelTracker


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


def require(role: Role) -> Callable[..., None]:
    """A dependency that lets a request through only with an API key holding `role`."""

    def check(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        keys: KeyRing = request.app.state.keys
        keys.check(authorization, role)

    return check
