"""Rollouts in the registry database, on SQLite and PostgreSQL: one active rollout per name,
transitions recorded once with their reason and figures, the promotion in the same
transaction, and manual changes that end or refuse a running rollout."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters.errors import AdapterConflict, AdapterNotFound
from adapters.registry import AdapterRegistry
from adapters.rollouts import RolloutMode, RolloutState

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit

GATES = {"min_requests": 20}


@pytest.fixture
def two_versions(registry: AdapterRegistry, kit: AdapterKit) -> AdapterRegistry:
    """`intent` with v1 promoted and v2 stored."""
    registry.register(kit.tar_gz(kit.folder(seed=0)))
    registry.register(kit.tar_gz(kit.folder(seed=1)))
    return registry


def test_a_rollout_starts_active_and_is_seen_by_another_process(
    two_versions: AdapterRegistry, open_registry: Callable[[], AdapterRegistry]
) -> None:
    started = two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 25.0, GATES)
    assert (started.candidate, started.baseline, started.state) == (2, 1, RolloutState.ACTIVE)
    assert started.percent == 25.0 and started.gates == GATES
    assert [e.kind for e in started.events] == ["started"]
    assert started.events[0].reason == "canary of intent@2 against intent@1 at 25 %"

    other = open_registry()  # another process, same database
    active = other.active_rollout("intent")
    assert active is not None and active.id == started.id and active.mode is RolloutMode.CANARY
    assert other.resolve("intent").version == 1  # nothing promoted by starting


def test_one_active_rollout_per_name(two_versions: AdapterRegistry, kit: AdapterKit) -> None:
    two_versions.register(kit.tar_gz(kit.folder(seed=2)))
    two_versions.start_rollout("intent", 2, RolloutMode.SHADOW, 0.0, GATES)
    with pytest.raises(AdapterConflict, match="already has an active rollout"):
        two_versions.start_rollout("intent", 3, RolloutMode.CANARY, 10.0, GATES)
    assert len(two_versions.rollouts("intent")) == 1


@pytest.mark.parametrize(
    ("version", "error", "needle"),
    [
        (1, AdapterConflict, "already the promoted version"),
        (7, AdapterNotFound, "has no version 7"),
    ],
)
def test_a_rollout_needs_another_existing_version(
    two_versions: AdapterRegistry, version: int, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle):
        two_versions.start_rollout("intent", version, RolloutMode.CANARY, 10.0, GATES)
    assert two_versions.rollouts("intent") == []


def test_a_promotion_by_the_gates_promotes_the_candidate_once(
    two_versions: AdapterRegistry, open_registry: Callable[[], AdapterRegistry]
) -> None:
    rollout = two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 25.0, GATES)
    figures = {"candidate_requests": 20, "label_js_distance": 0.01, "p95_latency_ratio": None}
    assert two_versions.finish_rollout(rollout, RolloutState.PROMOTED, "held", figures)
    # a second decision (another replica) changes nothing
    other = open_registry()
    assert not other.finish_rollout(rollout, RolloutState.ROLLED_BACK, "late", {})

    assert two_versions.resolve("intent").version == 2
    assert two_versions.active_rollout("intent") is None
    (ended,) = two_versions.rollouts("intent")
    assert ended.state is RolloutState.PROMOTED and ended.reason == "held"
    assert ended.ended_at is not None and ended.ended_at >= ended.started_at
    assert [(e.kind, e.reason) for e in ended.events] == [
        ("started", ended.events[0].reason),
        ("promoted", "held"),
    ]
    assert ended.events[1].figures == figures
    # the promotion is in the history `rollback` unwinds
    assert two_versions.rollback("intent").version == 1


def test_a_rollback_by_the_gates_keeps_the_current_version(
    two_versions: AdapterRegistry,
) -> None:
    rollout = two_versions.start_rollout("intent", 2, RolloutMode.SHADOW, 0.0, GATES)
    nan_ratio = {"p95_latency_ratio": float("nan"), "label_js_distance": 0.7}
    assert two_versions.finish_rollout(rollout, RolloutState.ROLLED_BACK, "js", nan_ratio)
    assert two_versions.resolve("intent").version == 1
    (ended,) = two_versions.rollouts("intent")
    assert ended.state is RolloutState.ROLLED_BACK
    assert ended.events[-1].figures == {"p95_latency_ratio": None, "label_js_distance": 0.7}
    # a new rollout of the same name may start once the last one ended
    again = two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 5.0, GATES)
    assert [r.id for r in two_versions.rollouts("intent")] == [ended.id, again.id]


def test_a_rollout_cannot_end_in_active(two_versions: AdapterRegistry) -> None:
    rollout = two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 5.0, GATES)
    with pytest.raises(ValueError, match="ends promoted, rolled_back or aborted"):
        two_versions.finish_rollout(rollout, RolloutState.ACTIVE, "no", {})


def test_manual_promote_and_abort_end_the_rollout(
    two_versions: AdapterRegistry, kit: AdapterKit
) -> None:
    two_versions.register(kit.tar_gz(kit.folder(seed=2)))
    two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 25.0, GATES)
    aborted = two_versions.end_rollout("intent", RolloutState.ABORTED, "aborted by hand")
    assert aborted.state is RolloutState.ABORTED and aborted.events[-1].kind == "aborted"
    assert two_versions.resolve("intent").version == 1
    with pytest.raises(AdapterConflict, match="has no active rollout"):
        two_versions.end_rollout("intent", RolloutState.ABORTED, "again")

    two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 25.0, GATES)
    promoted = two_versions.end_rollout("intent", RolloutState.PROMOTED, "promoted by hand")
    assert promoted.state is RolloutState.PROMOTED and two_versions.resolve("intent").version == 2

    # a plain promote of another version during a rollout aborts it, in the same change
    two_versions.start_rollout("intent", 3, RolloutMode.SHADOW, 0.0, GATES)
    two_versions.promote("intent", 1)
    last = two_versions.rollouts("intent")[-1]
    assert last.state is RolloutState.ABORTED and last.reason == "intent@1 promoted by hand"
    assert two_versions.resolve("intent").version == 1
    # a plain promote of the candidate promotes the rollout
    two_versions.start_rollout("intent", 3, RolloutMode.CANARY, 50.0, GATES)
    two_versions.promote("intent", 3)
    assert two_versions.rollouts("intent")[-1].state is RolloutState.PROMOTED
    assert two_versions.resolve("intent").version == 3


def test_rollback_and_deleting_the_candidate_wait_for_the_rollout(
    two_versions: AdapterRegistry,
) -> None:
    two_versions.start_rollout("intent", 2, RolloutMode.CANARY, 25.0, GATES)
    with pytest.raises(AdapterConflict, match=r"while rollout \d+ of version 2 runs"):
        two_versions.rollback("intent")
    with pytest.raises(AdapterConflict, match="on trial in rollout"):
        two_versions.delete("intent", 2)
    assert [v.version for v in two_versions.get("intent").versions] == [1, 2]


def test_rollouts_of_an_unknown_name_is_not_found(registry: AdapterRegistry) -> None:
    with pytest.raises(AdapterNotFound, match="no adapter named 'nope'"):
        registry.rollouts("nope")
    with pytest.raises(AdapterNotFound):
        registry.end_rollout("nope", RolloutState.ABORTED, "x")


@pytest.mark.parametrize("database_url", [None])
def test_a_registry_from_before_rollouts_gets_the_tables_when_it_opens(
    two_versions: AdapterRegistry, home: Path, open_registry: Callable[[], AdapterRegistry]
) -> None:
    two_versions.close()
    database = home / "adapters" / "registry.db"
    with sqlite3.connect(database) as conn:
        conn.execute("DROP TABLE rollout_events")
        conn.execute("DROP TABLE rollouts")
    reopened = open_registry()
    assert reopened.resolve("intent").version == 1  # the old data is untouched
    started = reopened.start_rollout("intent", 2, RolloutMode.CANARY, 10.0, GATES)
    with sqlite3.connect(database) as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"rollouts", "rollout_events", "rollouts_one_active"} <= indexes
    assert reopened.active_rollout("intent") == started.model_copy(update={"events": []})
