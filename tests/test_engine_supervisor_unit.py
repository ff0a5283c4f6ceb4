"""The engine supervisor's recovery state machine and the engine's restart guards, with
fakes (the real engine's death and restart: `test_engine_recovery_engine.py`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from server.base_model import BaseModel
from server.engine import Engine
from server.engine_supervisor import EnginePhase, EngineSupervisor
from server.errors import EngineUnavailable
from server.settings import Settings


def restarts(outcome: str) -> float:
    return REGISTRY.get_sample_value("hotswap_engine_restarts_total", {"outcome": outcome}) or 0.0


class FakeEngine:
    """Dies when told; its first `failing_restarts` restarts raise."""

    def __init__(self, failing_restarts: int = 0) -> None:
        self.errored = False
        self.failing_restarts = failing_restarts
        self.calls: list[str] = []

    def restart_blocking(self) -> None:
        self.calls.append("restart")
        if self.failing_restarts > 0:
            self.failing_restarts -= 1
            raise RuntimeError("engine core failed to start")
        self.errored = False

    def resume(self) -> None:
        self.calls.append("resume")


def supervisor(engine: FakeEngine, reload_fails: int = 0, attempts: int = 3) -> EngineSupervisor:
    left = [reload_fails]

    async def reload() -> None:
        engine.calls.append("reload")
        if left[0] > 0:
            left[0] -= 1
            raise EngineUnavailable("The engine stopped while serving this request.")

    return EngineSupervisor(
        engine, reload, check_interval_s=0.01, max_attempts=attempts, retry_delay_s=0.0
    )


async def test_death_restarts_reloads_then_resumes() -> None:
    engine = FakeEngine()
    watcher = supervisor(engine)
    ok, failed = restarts("ok"), restarts("failed")
    task = asyncio.create_task(watcher.watch())
    await asyncio.sleep(0.05)
    assert engine.calls == [] and watcher.phase is EnginePhase.SERVING
    engine.errored = True
    await asyncio.sleep(0.1)
    assert engine.calls == ["restart", "reload", "resume"]
    assert watcher.phase is EnginePhase.SERVING
    assert (restarts("ok") - ok, restarts("failed") - failed) == (1, 0)
    engine.errored = True  # a second death is recovered too
    await asyncio.sleep(0.1)
    assert engine.calls[3:] == ["restart", "reload", "resume"]
    assert restarts("ok") - ok == 2
    task.cancel()


async def test_failed_attempts_are_retried_then_it_serves() -> None:
    engine = FakeEngine(failing_restarts=1)
    watcher = supervisor(engine, reload_fails=1)
    ok, failed = restarts("ok"), restarts("failed")
    await watcher.recover()
    # restart fails; restart works but the reload fails; then both work
    assert engine.calls == ["restart", "restart", "reload", "restart", "reload", "resume"]
    assert watcher.phase is EnginePhase.SERVING
    assert (restarts("ok") - ok, restarts("failed") - failed) == (1, 2)


async def test_gives_up_after_max_attempts_and_stays_not_ready() -> None:
    engine = FakeEngine(failing_restarts=10)
    watcher = supervisor(engine, attempts=3)
    ok, failed = restarts("ok"), restarts("failed")
    engine.errored = True
    await asyncio.wait_for(watcher.watch(), timeout=5)  # returns: no endless loop
    assert engine.calls == ["restart"] * 3  # never resumed
    assert watcher.phase is EnginePhase.FAILED
    assert (restarts("ok") - ok, restarts("failed") - failed) == (0, 3)


class FakeLLM:
    """Stands for vLLM's AsyncLLM: `list_loras` never answers (as when its core died)."""

    def __init__(self) -> None:
        self.errored = False
        self.stopped = False

    async def list_loras(self) -> set[int]:
        await asyncio.Event().wait()
        return set()

    def get_tokenizer(self) -> Any:
        return None

    def shutdown(self) -> None:
        self.stopped = True


def engine_with(llm: FakeLLM) -> Engine:
    base = BaseModel(name="base", path=Path("/nonexistent"), fingerprint="f")
    engine = Engine(Settings(), base)
    engine._llm = llm
    engine._serving = True
    return engine


async def test_a_waiting_engine_call_fails_when_the_core_dies() -> None:
    llm = FakeLLM()
    engine = engine_with(llm)
    call = asyncio.create_task(engine.loaded_loras())
    await asyncio.sleep(0.1)
    assert not call.done()
    llm.errored = True
    assert engine.errored and not engine.ready
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(call, timeout=3)


async def test_restart_keeps_not_ready_until_resume_and_stops_the_old_engine() -> None:
    old, new = FakeLLM(), FakeLLM()
    engine = engine_with(old)
    old.errored = True
    engine._build = lambda: new  # type: ignore[method-assign]
    await asyncio.to_thread(engine.restart_blocking)
    assert old.stopped and not new.stopped
    assert not engine.ready and not engine.errored
    engine.resume()
    assert engine.ready


def test_shutdown_during_a_restart_stops_the_engine_it_builds() -> None:
    old, new = FakeLLM(), FakeLLM()
    engine = engine_with(old)

    def build_while_shutting_down() -> FakeLLM:
        engine.shutdown()
        return new

    engine._build = build_while_shutting_down  # type: ignore[method-assign]
    with pytest.raises(EngineUnavailable):
        engine.restart_blocking()
    assert old.stopped and new.stopped and not engine.ready
