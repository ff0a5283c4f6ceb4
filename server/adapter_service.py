"""Adapter management as the server does it: the registry's changes, with the engine loading
a version before any request can be routed to it. HTTP and gRPC both call this module."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from adapters.registry import AdapterRegistry, AdapterSummary, RegisterResult
from adapters.store import AdapterDetail, AdapterVersion
from server.catalog import lora_target
from server.engine import Engine
from server.metrics import instruments as m

logger = logging.getLogger(__name__)


class AdapterService:
    """Upload, promote, roll back and delete adapters without failing a request.

    A version is loaded into the engine (and has served one token) before the name points
    at it. Requests already running keep the version they resolved at their start: each
    version has its own engine id, so a swap never changes what a running request uses.
    """

    def __init__(self, registry: AdapterRegistry, engine: Engine) -> None:
        self._registry = registry
        self._engine = engine
        self._changes = asyncio.Lock()

    async def upload(
        self, archive: Path, *, name: str | None = None, description: str | None = None
    ) -> RegisterResult:
        """Validate and store an archive; a first version is promoted, and so loaded."""
        async with self._changes:
            result = await asyncio.to_thread(
                self._registry.register, archive, name=name, description=description
            )
            if self._registry.get(result.adapter.name).promoted_version == result.adapter.version:
                await self._load(result.adapter)
            return result

    def list_adapters(self) -> list[AdapterSummary]:
        return self._registry.list_adapters()

    def get(self, name: str) -> AdapterDetail:
        return self._registry.get(name)

    def get_version(self, name: str, version: int) -> AdapterVersion:
        return self._registry.get_version(name, version)

    async def promote(self, name: str, version: int) -> AdapterVersion:
        """Load `name@version`, then make it the version the bare name serves."""
        async with self._changes:
            await self._load(self._registry.get_version(name, version))
            promoted = self._registry.promote(name, version)
        m.ADAPTER_SWAPS.labels(name, "promote").inc()
        logger.info("Promoted %s@%d", name, version)
        return promoted

    async def rollback(self, name: str) -> AdapterVersion:
        """Load the previously promoted version, then promote it again."""
        async with self._changes:
            await self._load(self._registry.rollback_target(name))
            restored = self._registry.rollback(name)
        m.ADAPTER_SWAPS.labels(name, "rollback").inc()
        logger.info("Rolled %s back to version %d", name, restored.version)
        return restored

    async def delete(self, name: str, version: int) -> None:
        """Delete a version that is not promoted. The engine keeps its copy until evicted,
        so a request still running on that version finishes normally."""
        async with self._changes:
            await asyncio.to_thread(self._registry.delete, name, version)
        logger.info("Deleted %s@%d", name, version)

    async def warm_promoted(self, limit: int) -> None:
        """At start and after an engine restart, load up to `limit` promoted versions
        before serving."""
        async with self._changes:
            promoted = [s for s in self._registry.list_adapters() if s.promoted_version is not None]
            for summary in promoted[:limit]:
                await self._load(self._registry.resolve(summary.name))

    async def _load(self, version: AdapterVersion) -> None:
        """Load a version into the engine (timed, counted) before anything points at it."""
        started = time.perf_counter()
        await self._engine.load_lora(lora_target(version))
        m.ADAPTER_LOAD_SECONDS.labels(version.name).observe(time.perf_counter() - started)
        m.ADAPTER_LOADS.labels(version.name).inc()
        m.ADAPTERS_LOADED.set(len(await self._engine.loaded_loras()))
