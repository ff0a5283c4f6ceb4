"""Adapter management as the server does it: the registry's changes, with the engine loading
a version before any request can be routed to it. HTTP and gRPC both call this module."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from adapters.errors import AdapterError, AdapterRejected
from adapters.registry import AdapterRegistry, AdapterSummary, RegisterResult
from adapters.rollouts import Rollout, RolloutMode, RolloutState
from adapters.store import AdapterDetail, AdapterVersion
from server.catalog import lora_target
from server.engine import Engine
from server.errors import HotswapError
from server.metrics import instruments as m
from server.rollouts.gates import Gates
from server.rollouts.tracker import log_transition, show_state

logger = logging.getLogger(__name__)


class AdapterService:
    """Upload, promote, roll back and delete adapters without failing a request.

    A version is loaded into the engine (read and checked by vLLM) before the name points
    at it, the first version of a name included. Requests already running keep the version
    they resolved at their start: each version has its own engine id, so a swap never
    changes what a running request uses. Registry calls (database, cross-process locks) run
    in worker threads, never on the event loop.
    """

    def __init__(self, registry: AdapterRegistry, engine: Engine) -> None:
        self._registry = registry
        self._engine = engine
        self._changes = asyncio.Lock()
        self._gauge_refresh: asyncio.Task[None] | None = None
        self._gauge_stale = False

    async def upload(
        self, archive: Path, *, name: str | None = None, description: str | None = None
    ) -> RegisterResult:
        """Validate and store an archive unpromoted. When the name has nothing promoted, the
        version is loaded into the engine, then promoted; if the engine cannot load it, it
        stays stored unpromoted and the error says so."""
        async with self._changes:
            result = await asyncio.to_thread(
                self._registry.register,
                archive,
                name=name,
                description=description,
                promote_first=False,
            )
            stored = result.adapter
            detail = await asyncio.to_thread(self._registry.get, stored.name)
            if detail.promoted_version is None:
                await self._load(stored)
                await asyncio.to_thread(self._registry.promote, stored.name, stored.version)
                logger.info(
                    "Promoted %s@%d, the first servable version", stored.name, stored.version
                )
            return result

    async def list_adapters(self) -> list[AdapterSummary]:
        return await asyncio.to_thread(self._registry.list_adapters)

    async def get(self, name: str) -> AdapterDetail:
        return await asyncio.to_thread(self._registry.get, name)

    async def get_version(self, name: str, version: int) -> AdapterVersion:
        return await asyncio.to_thread(self._registry.get_version, name, version)

    async def promote(self, name: str, version: int) -> AdapterVersion:
        """Load `name@version`, then make it the version the bare name serves. A rollout of
        the name ends with it: promoted if `version` is its candidate, else aborted."""
        async with self._changes:
            await self._load(await self.get_version(name, version))
            active = await asyncio.to_thread(self._registry.active_rollout, name)
            promoted = await asyncio.to_thread(self._registry.promote, name, version)
        m.ADAPTER_SWAPS.labels(name, "promote").inc()
        logger.info("Promoted %s@%d", name, version)
        if active is not None:
            state = RolloutState.PROMOTED if version == active.candidate else RolloutState.ABORTED
            self._ended_by_hand(active, state, f"{name}@{version} promoted by hand")
        return promoted

    async def start_rollout(
        self, name: str, version: int, mode: RolloutMode, percent: float, gates: Gates
    ) -> Rollout:
        """Load `name@version`, then put it on trial against the promoted version: a canary
        of `percent` % of the name's requests, or a shadow of all of them."""
        async with self._changes:
            await self._load(await self.get_version(name, version))
            rollout = await asyncio.to_thread(
                self._registry.start_rollout,
                name,
                version,
                mode,
                percent,
                gates.model_dump(),
            )
        show_state(name, RolloutState.ACTIVE)
        log_transition(rollout, RolloutState.ACTIVE, "started", {"gates": rollout.gates})
        return rollout

    async def rollouts(self, name: str) -> list[Rollout]:
        """Every rollout of `name`, oldest first, with its transitions."""
        return await asyncio.to_thread(self._registry.rollouts, name)

    async def end_rollout(self, name: str, state: RolloutState) -> Rollout:
        """A person promotes the candidate of `name`'s active rollout (loaded first, as for
        any promote), or aborts it (the current version keeps serving). AdapterConflict when
        none is active."""
        verb = "promoted" if state is RolloutState.PROMOTED else "aborted"
        async with self._changes:
            active = await asyncio.to_thread(self._registry.active_rollout, name)
            if active is not None and state is RolloutState.PROMOTED:
                await self._load(await self.get_version(name, active.candidate))
            ended = await asyncio.to_thread(
                self._registry.end_rollout, name, state, f"{verb} by hand"
            )
        if state is RolloutState.PROMOTED:
            m.ADAPTER_SWAPS.labels(name, "promote").inc()
        self._ended_by_hand(ended, state, f"{verb} by hand")
        return ended

    @staticmethod
    def _ended_by_hand(rollout: Rollout, state: RolloutState, reason: str) -> None:
        m.ROLLOUT_DECISIONS.labels(rollout.name, state.value, "manual").inc()
        show_state(rollout.name, state)
        log_transition(rollout, state, reason, {})

    async def rollback(self, name: str) -> AdapterVersion:
        """Load the previously promoted version, then promote it again."""
        async with self._changes:
            await self._load(await asyncio.to_thread(self._registry.rollback_target, name))
            restored = await asyncio.to_thread(self._registry.rollback, name)
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
        before serving. A version that cannot be resolved or loaded is logged and skipped;
        an engine that is down stops the warm-up."""
        async with self._changes:
            adapters = await asyncio.to_thread(self._registry.list_adapters)
            promoted = [s for s in adapters if s.promoted_version is not None]
            for summary in promoted[:limit]:
                try:
                    await self._load(await asyncio.to_thread(self._registry.resolve, summary.name))
                except AdapterError as exc:
                    logger.error("Not warming adapter %s: %s", summary.name, exc)

    async def _load(self, version: AdapterVersion) -> None:
        """Load a version into the engine (timed, counted) before anything points at it.
        Raises EngineUnavailable when the engine is down, AdapterRejected when it cannot
        load this version."""
        started = time.perf_counter()
        try:
            await self._engine.load_lora(lora_target(version))
        except HotswapError:
            raise
        except Exception as exc:
            logger.exception("The engine could not load %s@%d", version.name, version.version)
            raise AdapterRejected(
                f"the engine could not load {version.name}@{version.version} "
                f"({type(exc).__name__}, details in the server log); it is stored, not served"
            ) from exc
        m.ADAPTER_LOAD_SECONDS.labels(version.name).observe(time.perf_counter() - started)
        m.ADAPTER_LOADS.labels(version.name).inc()
        self._refresh_loaded_gauge()

    def _refresh_loaded_gauge(self) -> None:
        """Recount `hotswap_adapters_loaded` in the background. Asking the engine what it
        holds is a round trip to its core, which answers between two steps: under load that
        was half of a promote's time, for a gauge."""
        self._gauge_stale = True
        if self._gauge_refresh is None or self._gauge_refresh.done():
            self._gauge_refresh = asyncio.create_task(self._count_loaded())

    async def _count_loaded(self) -> None:
        while self._gauge_stale:
            self._gauge_stale = False
            try:
                m.ADAPTERS_LOADED.set(len(await self._engine.loaded_loras()))
            except HotswapError as exc:  # engine down: its restart reloads, and recounts
                logger.warning("Not counting the loaded adapters: %s", exc)
                return
