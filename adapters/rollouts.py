"""Rollouts of adapter versions as the registry database holds them: one row per rollout and
one event per transition, so every replica sharing the database routes a name the same way.

A rollout puts version `candidate` of a name on trial against `baseline`, the version promoted
when it started. Its states form a small machine: it starts `active`, and ends exactly once,
`promoted` (the candidate is promoted in the same transaction), `rolled_back` (the gates
failed; the baseline stays promoted) or `aborted` (by a person, or superseded by a manual
promote). The end is a conditional update of an active row, so when several processes decide
at once, the first commit wins and the others change nothing. At most one rollout per name is
active, which a partial unique index enforces in the database itself.

Call the changes under the registry's writer lock (`AdapterRegistry` does); reads are single
statements in autocommit mode, like the store's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Row, bindparam, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from adapters.database import (
    WRITE,
    names,
    open_database,
    promotions,
    rollout_events,
    rollouts,
)
from adapters.errors import AdapterConflict


class RolloutMode(StrEnum):
    CANARY = "canary"
    """`percent` of the name's requests are answered by the candidate."""
    SHADOW = "shadow"
    """The baseline answers every request; a copy runs on the candidate, never returned."""


class RolloutState(StrEnum):
    ACTIVE = "active"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


ENDINGS = (RolloutState.PROMOTED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)
"""The states a rollout may move to, once, from `active`."""


class RolloutEvent(BaseModel):
    """One transition of a rollout: when, what, why, and the figures behind it."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    kind: str = Field(description="started, promoted, rolled_back or aborted")
    reason: str
    figures: dict[str, Any]


class Rollout(BaseModel):
    """One rollout of `name@candidate` against `name@baseline`, with its transitions."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    candidate: int
    baseline: int
    mode: RolloutMode
    percent: float
    gates: dict[str, Any]
    state: RolloutState
    started_at: datetime
    ended_at: datetime | None = None
    reason: str | None = None
    events: list[RolloutEvent] = Field(default_factory=list)


_AnyRow = Row[*tuple[Any, ...]]
_ACTIVE = select(rollouts).where(
    rollouts.c.name == bindparam("name"), rollouts.c.state == RolloutState.ACTIVE.value
)
_OF_NAME = select(rollouts).where(rollouts.c.name == bindparam("name")).order_by(rollouts.c.id)
_EVENTS_OF_NAME = (
    select(rollout_events)
    .join(rollouts, rollouts.c.id == rollout_events.c.rollout_id)
    .where(rollouts.c.name == bindparam("name"))
    .order_by(rollout_events.c.seq)
)


class RolloutStore:
    """The `rollouts` and `rollout_events` tables of one registry database."""

    def __init__(self, url: URL) -> None:
        """`url`: the registry's database, whose tables `AdapterStore` has created."""
        self._engine = open_database(url)
        self._writer = self._engine.execution_options(**WRITE)
        self._reader = open_database(url, autocommit=True)

    def close(self) -> None:
        self._engine.dispose()
        self._reader.dispose()

    # reads

    def active(self, name: str) -> Rollout | None:
        """The active rollout of `name` (without its events): one query, on every request."""
        with self._reader.connect() as conn:
            row = conn.execute(_ACTIVE, {"name": name}).first()
        return None if row is None else _rollout(row, [])

    def of_name(self, name: str) -> list[Rollout]:
        """Every rollout of `name`, oldest first, each with its events."""
        with self._engine.begin() as conn:  # one snapshot for both reads
            rows = conn.execute(_OF_NAME, {"name": name}).all()
            events = conn.execute(_EVENTS_OF_NAME, {"name": name}).all()
        by_rollout: dict[int, list[_AnyRow]] = {}
        for event in events:
            by_rollout.setdefault(event.rollout_id, []).append(event)
        return [_rollout(row, by_rollout.get(row.id, [])) for row in rows]

    # changes: call under the registry's writer lock

    def start(
        self,
        name: str,
        candidate: int,
        baseline: int,
        mode: RolloutMode,
        percent: float,
        gates: Mapping[str, Any],
    ) -> Rollout:
        """Record a new active rollout and its `started` event; AdapterConflict when the name
        already has an active one."""
        now = datetime.now(UTC).isoformat()
        try:
            with self._transaction() as conn:
                rollout_id = conn.execute(
                    rollouts.insert()
                    .values(
                        name=name,
                        candidate=candidate,
                        baseline=baseline,
                        mode=mode.value,
                        percent=percent,
                        gates=_json(gates),
                        state=RolloutState.ACTIVE.value,
                        started_at=now,
                    )
                    .returning(rollouts.c.id)
                ).scalar_one()
                reason = f"{mode.value} of {name}@{candidate} against {name}@{baseline}" + (
                    f" at {percent:g} %" if mode is RolloutMode.CANARY else ""
                )
                _add_event(conn, rollout_id, now, "started", reason, {"gates": dict(gates)})
        except IntegrityError:
            raise AdapterConflict(
                f"adapter {name!r} already has an active rollout; promote or abort it first"
            ) from None
        (started,) = [r for r in self.of_name(name) if r.id == rollout_id]
        return started

    def finish(
        self,
        rollout_id: int,
        state: RolloutState,
        reason: str,
        figures: Mapping[str, Any],
        promote: int | None = None,
    ) -> bool:
        """End an active rollout in `state`, with its event; `promote`: the version the name
        serves from now on, set in the same transaction. False (and nothing changed) when the
        rollout was no longer active: another process or a person ended it first."""
        if state not in ENDINGS:
            raise ValueError(f"a rollout ends promoted, rolled_back or aborted, not {state}")
        now = datetime.now(UTC).isoformat()
        with self._transaction() as conn:
            ended = conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout_id, rollouts.c.state == RolloutState.ACTIVE.value)
                .values(state=state.value, ended_at=now, reason=reason)
                .returning(rollouts.c.name)
            ).first()
            if ended is None:
                return False
            _add_event(conn, rollout_id, now, state.value, reason, figures)
            if promote is not None:
                _promote(conn, ended.name, promote)
        return True

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn


def _promote(conn: Connection, name: str, version: int) -> None:
    """Promote `version` as `AdapterStore.promote` does: the name's row, then the history
    that `rollback` unwinds (nothing when it is already promoted)."""
    current = conn.execute(
        select(names.c.promoted).where(names.c.name == name).with_for_update()
    ).scalar_one()
    if current != version:
        conn.execute(update(names).where(names.c.name == name).values(promoted=version))
        conn.execute(promotions.insert().values(name=name, version=version))


def _add_event(
    conn: Connection,
    rollout_id: int,
    at: str,
    kind: str,
    reason: str,
    figures: Mapping[str, Any],
) -> None:
    conn.execute(
        rollout_events.insert().values(
            rollout_id=rollout_id, at=at, kind=kind, reason=reason, figures=_json(figures)
        )
    )


def _json(value: Mapping[str, Any]) -> str:
    """Strict JSON: a figure that is not finite (a ratio over nothing) is stored as null."""
    return json.dumps(_finite(value), sort_keys=True, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _rollout(row: _AnyRow, events: list[_AnyRow]) -> Rollout:
    return Rollout(
        id=row.id,
        name=row.name,
        candidate=row.candidate,
        baseline=row.baseline,
        mode=RolloutMode(row.mode),
        percent=row.percent,
        gates=json.loads(row.gates),
        state=RolloutState(row.state),
        started_at=datetime.fromisoformat(row.started_at),
        ended_at=None if row.ended_at is None else datetime.fromisoformat(row.ended_at),
        reason=row.reason,
        events=[
            RolloutEvent(
                at=datetime.fromisoformat(e.at),
                kind=e.kind,
                reason=e.reason,
                figures=json.loads(e.figures),
            )
            for e in events
        ],
    )
