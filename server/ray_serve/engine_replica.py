"""The engine deployment: each replica owns one hotswap `Engine` (one vLLM engine) and loads
adapters on demand through Ray Serve model multiplexing, keyed by `name@version`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.util import get_node_ip_address

from server.auth import KeyRing
from server.base_model import resolve_base_model
from server.engine import Chunk, Engine, LoraTarget, Sampling
from server.metrics.instruments import ADAPTER_COLD_LOADS, ADAPTER_LOAD_SECONDS, ADAPTER_LOADS
from server.ray_serve.replica_metrics import scrape_app, scrape_host, serve_scrapes
from server.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedBy:
    """First item of every stream from a replica: who answers."""

    replica: str


def metrics_targets_dir(settings: Settings) -> Path:
    """Where replicas publish their scrape addresses (Prometheus `file_sd_configs`)."""
    return settings.ray_metrics_dir or settings.home / "ray" / "metrics-targets"


class EngineReplica:
    """One engine per replica. Requests carry the adapter they run on; the multiplexed loader
    loads it into this replica's engine the first time, so Ray routes the next requests for the
    same `name@version` here (it prefers replicas that report holding the model id)."""

    def __init__(self, settings_json: dict[str, Any]) -> None:
        """Starts this replica's engine (blocks for its start-up: Ray waits for it)."""
        settings = Settings(**settings_json)  # secrets come from this replica's environment
        context = serve.get_replica_context()
        self._replica = context.replica_tag
        base = resolve_base_model(settings.base_model, settings.home, settings.served_model_name)
        self._engine = Engine(settings, base)
        self._engine.start_blocking()
        self._targets: dict[str, LoraTarget] = {}
        self._preloading: set[str] = set()

        async def load(model_id: str) -> LoraTarget:  # Ray keeps its cache on the function
            return await self._load_adapter(model_id)

        self._held = serve.multiplexed(max_num_models_per_replica=settings.max_cpu_loras)(load)
        self._target_file = self._serve_metrics(settings)
        logger.info("Engine replica %s ready (pid %d)", self._replica, os.getpid())

    def _serve_metrics(self, settings: Settings) -> Path:
        """This replica's Prometheus registry on its own port (`replica_metrics`: behind
        keys, or on loopback), announced as a file_sd target."""
        keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
        host = scrape_host(keys, get_node_ip_address())
        server = serve_scrapes(scrape_app(keys, settings.public_metrics), host)
        address = f"{host}:{server.server_port}"
        targets_dir = metrics_targets_dir(settings)
        targets_dir.mkdir(parents=True, exist_ok=True)
        target_file = targets_dir / f"{self._replica}.json"
        targets = [{"targets": [address], "labels": {"replica": self._replica}}]
        tmp = target_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(target_file)
        return target_file

    async def _load_adapter(self, model_id: str) -> LoraTarget:
        """The multiplexed loader: put `name@version` into this replica's engine."""
        lora = self._targets[model_id]
        name = lora.name.partition("@")[0]
        if model_id not in self._preloading:  # a request waits for this load
            ADAPTER_COLD_LOADS.labels(name).inc()
        started = asyncio.get_running_loop().time()
        await self._engine.load_lora(lora)
        ADAPTER_LOAD_SECONDS.labels(name).observe(asyncio.get_running_loop().time() - started)
        ADAPTER_LOADS.labels(name).inc()
        return lora

    async def _hold(self, lora: LoraTarget) -> None:
        """Make sure this replica holds `lora` (loads it on first use; LRU beyond the cap)."""
        self._targets[lora.name] = lora
        await self._held(lora.name)

    async def ready(self) -> str:
        """The served base model's name, once the engine serves."""
        return self._engine.base.name

    async def load(self, lora: LoraTarget) -> None:
        """Load ahead of requests (promote, rollback, upload, start-up)."""
        self._preloading.add(lora.name)
        try:
            await self._hold(lora)
        finally:
            self._preloading.discard(lora.name)

    async def loaded_loras(self) -> set[int]:
        return await self._engine.loaded_loras()

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: Sampling,
        request_id: str,
        lora: LoraTarget | None,
    ) -> AsyncIterator[ServedBy | Chunk]:
        """`Engine.generate` on this replica, after `ServedBy`. Cancelling the stream (client
        gone) closes the engine's iterator, which aborts the request in vLLM."""
        if lora is not None:
            await self._hold(lora)
        yield ServedBy(self._replica)
        async for chunk in self._engine.generate(prompt_token_ids, sampling, request_id, lora):
            yield chunk

    def check_health(self) -> None:
        """Called by Ray Serve: a replica whose engine core died is replaced."""
        if self._engine.errored:
            raise RuntimeError("The engine core of this replica died.")

    def __del__(self) -> None:
        target_file: Path | None = getattr(self, "_target_file", None)
        if target_file is not None:
            target_file.unlink(missing_ok=True)
        engine: Engine | None = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
