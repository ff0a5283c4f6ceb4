"""The live side of rollouts in one server process: figures per active rollout, the gates'
decision, and its commit to the registry.

`RolloutMonitor.track` is called at every resolve of a bare name (in a worker thread) with the
rollout the database holds now: it keeps one `RolloutTracker` per active rollout and forgets it
when the rollout has ended, wherever it was ended. Outcomes are recorded on the event loop;
when the gates decide, the decision is committed to the database in a worker thread, never on
the loop. Several processes sharing the registry each judge their own traffic; the first
commit wins (`RolloutStore.finish` ends active rollouts only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from enum import StrEnum

from pydantic import ValidationError

from adapters.registry import AdapterRegistry
from adapters.rollouts import Rollout, RolloutMode, RolloutState
from server.metrics import instruments as m
from server.rollouts.gates import Figures, Gates, Verdict, judge
from server.rollouts.stats import ArmStats, Outcome, compare

logger = logging.getLogger(__name__)


class Role(StrEnum):
    CANDIDATE = "candidate"
    CURRENT = "current"


_FIGURE_GAUGES = (
    "candidate_validity",
    "current_validity",
    "validity_drop",
    "label_js_distance",
    "label_js_excess",
    "shadow_agreement",
    "p95_latency_ratio",
    "candidate_error_rate",
)


class RolloutTracker:
    """The figures of one active rollout in this process, judged after every answer."""

    def __init__(self, rollout: Rollout, gates: Gates, monitor: RolloutMonitor) -> None:
        self.rollout = rollout
        self.gates = gates
        self._monitor = monitor
        self._arms = {Role.CANDIDATE: ArmStats(), Role.CURRENT: ArmStats()}
        self._agreed = 0
        self._compared = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self.verdict: Verdict | None = None
        """Set once the gates decided (the commit may still be running)."""

    @property
    def shadow(self) -> bool:
        return self.rollout.mode is RolloutMode.SHADOW

    @property
    def routes_candidate(self) -> bool:
        """False once the gates rolled the candidate back: no more requests go to it, even
        before the decision is committed."""
        return self.verdict is None or self.verdict.promote

    def version(self, role: Role) -> int:
        return self.rollout.candidate if role is Role.CANDIDATE else self.rollout.baseline

    def record(self, role: Role, outcome: Outcome) -> None:
        """One answer of `role`'s version (on the event loop)."""
        version = str(self.version(role))
        if outcome.error:
            kind = "error"
        elif outcome.valid is None:
            kind = "unchecked"
        else:
            kind = "valid" if outcome.valid else "invalid"
        name = self.rollout.name
        m.ROLLOUT_REQUESTS.labels(name, version, role.value, kind).inc()
        if not outcome.error:
            m.ROLLOUT_LATENCY_SECONDS.labels(name, version, role.value).observe(outcome.latency_s)
        with self._lock:
            self._arms[role].add(outcome)
        self._judge()

    def agreement(self, agreed: bool) -> None:
        """A shadow answer compared with the current version's answer to the same request."""
        with self._lock:
            self._agreed += agreed
            self._compared += 1

    def dropped(self) -> None:
        """A shadow copy not run (the engine queue was long)."""
        m.ROLLOUT_SHADOW_DROPPED.labels(self.rollout.name).inc()
        with self._lock:
            self._dropped += 1

    def figures(self, with_chance: bool = False) -> Figures:
        """The comparison so far; `with_chance`: with the label distance chance gives."""
        with self._lock:
            return compare(
                self._arms[Role.CANDIDATE],
                self._arms[Role.CURRENT],
                (self._agreed, self._compared) if self.shadow else None,
                self._dropped,
                with_chance,
            )

    def _judge(self) -> None:
        with self._lock:
            reached = min(arm.requests for arm in self._arms.values()) >= self.gates.min_requests
        figures = self.figures(with_chance=reached and self.verdict is None)
        values = figures.as_dict()
        for key in _FIGURE_GAUGES:
            if values[key] is not None:
                m.ROLLOUT_COMPARISON.labels(self.rollout.name, key).set(values[key])
        if self.verdict is not None:
            return
        verdict = judge(self.gates, figures, self.shadow)
        if verdict is not None:
            self.verdict = verdict
            self._monitor.decided(self, verdict, figures)


class RolloutMonitor:
    """Trackers of the active rollouts, by adapter name; thread-safe."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self._registry = registry
        self._trackers: dict[str, RolloutTracker] = {}
        self._lock = threading.Lock()
        self._commits: set[asyncio.Task[None]] = set()

    def track(self, name: str, rollout: Rollout | None) -> RolloutTracker | None:
        """The tracker of `rollout`, the active rollout of `name` as the database holds it now
        (None: no rollout). Called at every resolve, in a worker thread."""
        with self._lock:
            current = self._trackers.get(name)
            if rollout is not None and current is not None and current.rollout.id == rollout.id:
                return current
            if rollout is None:
                self._trackers.pop(name, None)
            else:
                current = self._trackers[name] = RolloutTracker(rollout, _gates(rollout), self)
        if rollout is None:
            if current is not None:  # it ended since the last request, here or elsewhere
                self._show_ended(name, current.rollout.id)
            return None
        show_state(name, RolloutState.ACTIVE)
        m.ROLLOUT_CANARY_PERCENT.labels(name).set(rollout.percent)
        return current

    def tracker(self, name: str) -> RolloutTracker | None:
        """The live tracker of `name`'s active rollout in this process, if it saw traffic."""
        with self._lock:
            return self._trackers.get(name)

    def decided(self, tracker: RolloutTracker, verdict: Verdict, figures: Figures) -> None:
        """Commit the gates' decision off the event loop (called on it)."""
        task = asyncio.get_running_loop().create_task(self._commit(tracker, verdict, figures))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit(self, tracker: RolloutTracker, verdict: Verdict, figures: Figures) -> None:
        rollout = tracker.rollout
        state = RolloutState.PROMOTED if verdict.promote else RolloutState.ROLLED_BACK
        values = figures.as_dict()
        try:
            ended = await asyncio.to_thread(
                self._registry.finish_rollout, rollout, state, verdict.reason, values
            )
        except Exception:
            logger.exception("Could not record the decision on rollout %d", rollout.id)
            tracker.verdict = None  # the next answer decides again
            return
        if not ended:
            logger.info("Rollout %d of %s had already ended", rollout.id, rollout.name)
            return
        m.ROLLOUT_DECISIONS.labels(rollout.name, state.value, "gates").inc()
        show_state(rollout.name, state)
        log_transition(rollout, state, verdict.reason, values)

    def _show_ended(self, name: str, rollout_id: int) -> None:
        """Show the end state of a rollout that ended outside this process's decision."""
        try:
            ended = next(r for r in self._registry.rollouts(name) if r.id == rollout_id)
        except Exception:
            logger.exception("Could not read how rollout %d of %s ended", rollout_id, name)
            return
        show_state(name, ended.state)


def log_transition(rollout: Rollout, state: RolloutState, reason: str, figures: object) -> None:
    """The JSON log line of a transition: rollout, state, reason and figures."""
    logger.info(
        "Rollout %d of %s@%d (%s against v%d): %s, %s; figures %s",
        rollout.id,
        rollout.name,
        rollout.candidate,
        rollout.mode.value,
        rollout.baseline,
        state.value,
        reason,
        json.dumps(figures, sort_keys=True, default=str),
    )


def show_state(name: str, state: RolloutState) -> None:
    """The state gauges of `name`'s latest rollout. While one is active, its rollback and
    dropped-copy counters exist (at 0), so that `increase()` in the alert sees the first
    rollback and the dashboard reads a rate of dropped copies from the start."""
    for each in RolloutState:
        m.ROLLOUT_STATE.labels(name, each.value).set(1 if each is state else 0)
    if state is RolloutState.ACTIVE:
        m.ROLLOUT_DECISIONS.labels(name, RolloutState.ROLLED_BACK.value, "gates")
        m.ROLLOUT_SHADOW_DROPPED.labels(name)  # at 0: a rate of dropped copies from the start
    else:
        m.ROLLOUT_CANARY_PERCENT.labels(name).set(0)


def _gates(rollout: Rollout) -> Gates:
    """The gates stored with the rollout (validated when it started); the defaults if the
    row no longer reads (logged)."""
    try:
        return Gates.model_validate(rollout.gates)
    except ValidationError:
        logger.error("Rollout %d has unreadable gates; judging it on the defaults", rollout.id)
        return Gates()
