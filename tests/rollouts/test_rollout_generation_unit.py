"""Rollouts through the domain layer, on a real registry and a scripted engine: canary
routing by request id, gates that promote or roll back, shadow copies that clients never see,
bounded shadow load, and manual ends obeyed mid-rollout."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import pytest

from adapters.registry import AdapterRegistry
from adapters.rollouts import Rollout, RolloutMode, RolloutState
from server.catalog import ModelCatalog
from server.engine import Chunk, LoraTarget, Sampling
from server.errors import EngineUnavailable
from server.generation import (
    ADAPTER_VERSION_HEADER,
    GenerationRequest,
    GenerationResult,
    GenerationService,
    version_headers,
)
from server.metrics import instruments as m
from server.metrics.labels import LabelTracker
from server.request_log import request_id
from server.rollouts.gates import Verdict
from server.rollouts.routing import takes_candidate
from server.schema_policy import SchemaPolicy
from tests.support.fakes import FakeGuard

if TYPE_CHECKING:
    pass

SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": ["buy", "sell"]}},
    "required": ["intent"],
}
GATES = {"min_requests": 10, "max_p95_latency_ratio": 100.0}


class ScriptedEngine:
    """Answers each adapter version with its own reply (`{"intent": ...}`), after `delay` s;
    fails the versions in `failing`; records which version every run used."""

    def __init__(self, replies: Mapping[str, str], delay: float = 0.0) -> None:
        self.replies = dict(replies)
        self.delay = delay
        self.failing: set[str] = set()
        self.runs: list[str] = []

    def render_chat(self, messages: object) -> list[int]:
        return [1, 2, 3]

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        name = lora.name if lora is not None else "base"
        self.runs.append(name)
        await asyncio.sleep(self.delay)
        if name in self.failing:
            raise EngineUnavailable("The engine is restarting.")
        text = f'{{"intent": "{self.replies[name]}"}}'
        yield Chunk(text, len(ids), len(text), "stop")


@pytest.fixture
def database_url() -> None:
    """SQLite: these tests are about routing and decisions, not the backend."""
    return None


def service(
    registry: AdapterRegistry, engine: ScriptedEngine, max_in_flight: int = 64
) -> tuple[GenerationService, ModelCatalog]:
    catalog = ModelCatalog("base", registry)
    gen = GenerationService(
        engine,  # type: ignore[arg-type]
        catalog,
        max_model_len=200,
        default_max_tokens=32,
        max_in_flight=max_in_flight,
        labels=LabelTracker(),
        schemas=SchemaPolicy(FakeGuard()),
    )
    return gen, catalog


async def ask(gen: GenerationService, key: str) -> GenerationResult:
    """One client request whose id (the `x-request-id`) is `key`."""
    request_id.set(key)  # this task's own context, as the HTTP middleware sets it
    prepared = await gen.prepare(
        GenerationRequest(model="intent", prompt="buy or sell?", json_schema=SCHEMA, max_tokens=32)
    )
    (result,) = await gen.complete(prepared, f"engine-{key}")
    return result


async def until_ended(registry: AdapterRegistry) -> Rollout:
    """The name's latest rollout once it is no longer active (the commit runs in a thread)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        latest = registry.rollouts("intent")[-1]
        if latest.state is not RolloutState.ACTIVE:
            return latest
        await asyncio.sleep(0.02)
    raise AssertionError("the rollout did not end")


async def test_a_good_canary_is_promoted_once_both_versions_reach_the_minimum(
    intent: AdapterRegistry,
) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "buy"})
    gen, _ = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.CANARY, 25.0, GATES)
    keys = [f"client-{i}" for i in range(60)]
    answered = [(await ask(gen, key)).model.version for key in keys[:30]]
    ended = await until_ended(intent)

    assert ended.state is RolloutState.PROMOTED
    decision = ended.events[-1]
    assert (
        decision.figures["candidate_requests"] == 10 and decision.figures["current_requests"] >= 10
    )
    assert decision.figures["label_js_distance"] == pytest.approx(0.0)
    assert "every gate held" in decision.reason
    # until the decision, each request went where its id says, and no request failed
    routed = [2 if takes_candidate(key, 25.0) else 1 for key in keys[:30]]
    before = next(i for i in range(30) if routed[: i + 1].count(2) == 10) + 1
    assert answered[:before] == routed[:before]
    assert intent.resolve("intent").version == 2
    assert {(await ask(gen, key)).model.version for key in keys[30:]} == {2}


async def test_a_canary_whose_labels_depart_is_rolled_back_and_gets_no_more_traffic(
    intent: AdapterRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.rollouts.tracker")
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "sell"})
    gen, catalog = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.CANARY, 50.0, GATES)
    for i in range(40):
        await ask(gen, f"bad-{i}")
    ended = await until_ended(intent)

    assert ended.state is RolloutState.ROLLED_BACK
    assert "label JS beyond chance" in (ended.reason or "")
    assert ended.events[-1].figures["label_js_distance"] == pytest.approx(1.0)
    assert ended.events[-1].figures["label_js_excess"] > 0.1
    assert intent.resolve("intent").version == 1
    decided_at = ended.events[-1].figures
    assert min(decided_at["candidate_requests"], decided_at["current_requests"]) == 10
    # decided at the minimum: every later request stayed on v1
    assert engine.runs.count("intent@2") == decided_at["candidate_requests"]
    rolled_back = m.ROLLOUT_DECISIONS.labels("intent", "rolled_back", "gates")._value.get()
    assert rolled_back >= 1
    await ask(gen, "after")
    assert catalog.rollouts.tracker("intent") is None  # the next resolve saw it ended
    (logged,) = [r.getMessage() for r in caplog.records if "rolled_back" in r.getMessage()]
    assert logged.startswith(f"Rollout {ended.id} of intent@2 (canary against v1): rolled_back")
    assert "label JS beyond chance" in logged and '"label_js_distance": 1.0' in logged
    assert m.ROLLOUT_STATE.labels("intent", "rolled_back")._value.get() == 1


async def test_a_candidate_that_fails_in_the_engine_is_rolled_back_on_its_error_rate(
    intent: AdapterRegistry,
) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "buy"})
    engine.failing.add("intent@2")
    gen, _ = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.CANARY, 50.0, GATES)
    failed = 0
    for i in range(40):
        try:
            await ask(gen, f"err-{i}")
        except EngineUnavailable:
            failed += 1
    ended = await until_ended(intent)
    assert ended.state is RolloutState.ROLLED_BACK and "error rate 1 > 0.01" in (ended.reason or "")
    assert failed == ended.events[-1].figures["candidate_requests"] >= 10


async def test_in_shadow_clients_only_see_the_current_version(intent: AdapterRegistry) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "buy"})
    gen, _ = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.SHADOW, 0.0, GATES)
    results = [await ask(gen, f"shadow-{i}") for i in range(10)]
    assert {r.model.version for r in results} == {1}
    assert {r.output["intent"] for r in results} == {"buy"}
    ended = await until_ended(intent)
    assert ended.state is RolloutState.PROMOTED
    assert ended.events[-1].figures["shadow_agreement"] == 1.0
    assert engine.runs.count("intent@2") == 10 and engine.runs.count("intent@1") == 10


async def test_a_shadow_that_disagrees_is_rolled_back_and_never_reaches_a_client(
    intent: AdapterRegistry,
) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "sell"})
    gen, _ = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.SHADOW, 0.0, {**GATES, "max_label_js": 1.0})
    results = [await ask(gen, f"disagree-{i}") for i in range(12)]
    assert {r.output["intent"] for r in results} == {"buy"}
    ended = await until_ended(intent)
    assert ended.state is RolloutState.ROLLED_BACK
    assert "shadow agreement 0 < 0.9" in (ended.reason or "")


async def test_shadow_copies_are_dropped_and_counted_when_the_queue_is_long(
    intent: AdapterRegistry,
) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "buy"}, delay=0.05)
    gen, catalog = service(intent, engine, max_in_flight=8)
    intent.start_rollout("intent", 2, RolloutMode.SHADOW, 0.0, {"min_requests": 1000})
    results = await asyncio.gather(*(ask(gen, f"busy-{i}") for i in range(8)))
    assert {r.model.version for r in results} == {1}  # every client answered, by v1
    await asyncio.sleep(0.2)
    tracker = catalog.rollouts.tracker("intent")
    assert tracker is not None
    figures = tracker.figures()
    assert figures.shadow_dropped >= 1
    assert figures.candidate_requests + figures.shadow_dropped == 8
    assert figures.candidate_requests <= 2  # at most a quarter of the limit ran at once


async def test_a_manual_abort_mid_rollout_is_obeyed(intent: AdapterRegistry) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "buy"})
    gen, _ = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.CANARY, 50.0, {"min_requests": 1000})
    before = {(await ask(gen, f"mid-{i}")).model.version for i in range(20)}
    assert before == {1, 2}
    intent.end_rollout("intent", RolloutState.ABORTED, "aborted by hand")
    after = {(await ask(gen, f"mid-{i}")).model.version for i in range(20)}
    assert after == {1}


async def test_a_pinned_version_is_never_rerouted(intent: AdapterRegistry) -> None:
    _, catalog = service(intent, ScriptedEngine({}))
    intent.start_rollout("intent", 2, RolloutMode.CANARY, 99.99, GATES)
    pinned = {catalog.resolve("intent@1", f"k{i}").version for i in range(50)}
    routed = {catalog.resolve("intent", f"k{i}").version for i in range(50)}
    assert pinned == {1} and routed == {2}
    assert catalog.resolve("intent@1", "k").rollout is None


async def test_once_the_gates_roll_back_no_request_waits_for_the_commit(
    intent: AdapterRegistry,
) -> None:
    _, catalog = service(intent, ScriptedEngine({}))
    rollout = intent.start_rollout("intent", 2, RolloutMode.CANARY, 99.99, GATES)
    tracker = catalog.rollouts.track("intent", rollout)
    assert tracker is not None
    assert {catalog.resolve("intent", f"k{i}").version for i in range(20)} == {2}
    tracker.verdict = Verdict(promote=False, reason="gates failed")  # commit still running
    assert {catalog.resolve("intent", f"k{i}").version for i in range(20)} == {1}


def test_the_version_header_names_the_answering_version(intent: AdapterRegistry) -> None:
    _, catalog = service(intent, ScriptedEngine({}))
    assert version_headers(catalog.resolve("intent")) == {ADAPTER_VERSION_HEADER: "intent@1"}
    assert version_headers(catalog.resolve(None)) == {}


async def test_streamed_answers_count_for_the_gates_and_get_shadow_copies(
    intent: AdapterRegistry,
) -> None:
    engine = ScriptedEngine({"intent@1": "buy", "intent@2": "buy"})
    gen, catalog = service(intent, engine)
    intent.start_rollout("intent", 2, RolloutMode.SHADOW, 0.0, {"min_requests": 1000})
    for i in range(3):
        request_id.set(f"stream-{i}")
        prepared = await gen.prepare(
            GenerationRequest(model="intent", prompt="x", json_schema=SCHEMA, max_tokens=32)
        )
        text = "".join([chunk.text async for chunk in gen.stream(prepared, f"s{i}")])
        assert text == '{"intent": "buy"}' and prepared.model.version == 1
    await asyncio.sleep(0.1)  # the shadow copies run in the background
    tracker = catalog.rollouts.tracker("intent")
    assert tracker is not None
    figures = tracker.figures()
    assert (figures.current_requests, figures.candidate_requests) == (3, 3)
    assert figures.shadow_agreement == 1.0 and figures.current_validity == 1.0
