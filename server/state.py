"""What a running server holds once its engine is up, shared by the HTTP routes (through
FastAPI dependencies, `server/http/state.py`) and the gRPC servicers alike."""

from __future__ import annotations

from dataclasses import dataclass

from server.adapter_service import AdapterService
from server.catalog import ModelCatalog
from server.engine import Engine
from server.generation import GenerationService
from server.metrics.labels import LabelTracker


@dataclass
class ServerState:
    engine: Engine
    catalog: ModelCatalog
    generation: GenerationService
    adapters: AdapterService
    labels: LabelTracker
