"""Engine-death recovery: notice that the engine core died, restart the engine, reload the
adapters it served, and let requests in again.

vLLM fails the requests running in a dead engine core itself (`EngineDeadError`, which
`Engine` turns into `EngineUnavailable`: HTTP 503, gRPC UNAVAILABLE), and `Engine.ready` is
False from that moment, so /readyz answers 503 and new requests 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Protocol

from server.metrics.instruments import ENGINE_RESTARTS

logger = logging.getLogger(__name__)


class SupervisedEngine(Protocol):
    """What the supervisor needs of `server.engine.Engine`."""

    @property
    def errored(self) -> bool: ...

    def restart_blocking(self) -> None: ...

    def resume(self) -> None: ...


class EnginePhase(StrEnum):
    SERVING = "serving"
    RECOVERING = "recovering"
    FAILED = "failed"  # restarts failed `max_attempts` times in a row; stays not-ready


class EngineSupervisor:
    """Watches one engine; run `watch()` as a task for the server's lifetime."""

    def __init__(
        self,
        engine: SupervisedEngine,
        reload_adapters: Callable[[], Awaitable[None]],
        *,
        check_interval_s: float,
        max_attempts: int,
        retry_delay_s: float,
    ) -> None:
        """`reload_adapters` loads and warms, into the new engine, the adapters the old one
        served. A restart (new engine and reload) is tried up to `max_attempts` times in a
        row, `retry_delay_s` apart."""
        self._engine = engine
        self._reload_adapters = reload_adapters
        self._check_interval_s = check_interval_s
        self._max_attempts = max_attempts
        self._retry_delay_s = retry_delay_s
        self.phase = EnginePhase.SERVING

    async def watch(self) -> None:
        """Recover every time the engine core dies; returns only when recovery failed."""
        while self.phase is EnginePhase.SERVING:
            await asyncio.sleep(self._check_interval_s)  # vLLM offers no event to wait on
            if self._engine.errored:
                await self.recover()

    async def recover(self) -> None:
        """Restart the engine and reload its adapters; `phase` tells how it ended."""
        self.phase = EnginePhase.RECOVERING
        died = time.monotonic()
        logger.error("The engine core died; restarting the engine")
        for attempt in range(1, self._max_attempts + 1):
            try:
                await asyncio.to_thread(self._engine.restart_blocking)
                await self._reload_adapters()
            except Exception:
                ENGINE_RESTARTS.labels("failed").inc()
                logger.exception("Engine restart %d/%d failed", attempt, self._max_attempts)
                if attempt < self._max_attempts:
                    await asyncio.sleep(self._retry_delay_s)
                continue
            self._engine.resume()
            ENGINE_RESTARTS.labels("ok").inc()
            self.phase = EnginePhase.SERVING
            logger.warning(
                "Engine restarted and serving again %.1f s after its core died (attempt %d)",
                time.monotonic() - died,
                attempt,
            )
            return
        self.phase = EnginePhase.FAILED
        logger.critical(
            "The engine could not be restarted (%d attempts); the server stays not ready "
            "until it is restarted by hand",
            self._max_attempts,
        )
