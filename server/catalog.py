"""What a request can address in `model` / `adapter`: the base model, or an adapter of the
registry by `name` (its promoted version, or under a rollout the version the rollout routes
the request to) or `name@version` (pinned, never rerouted)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from adapters.errors import AdapterNotFound
from adapters.manifest import TaskSpec
from adapters.registry import AdapterRegistry
from adapters.rollouts import RolloutMode
from adapters.store import AdapterVersion
from server.engine import LoraTarget
from server.errors import ModelNotFound
from server.request_log import request_id
from server.rollouts.routing import takes_candidate
from server.rollouts.tracker import Role, RolloutMonitor, RolloutTracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutRoute:
    """How a request takes part in a rollout: the tracker its outcome goes to, the role of
    the version that answers it, and for a shadow rollout the candidate its copy runs on."""

    tracker: RolloutTracker
    role: Role
    shadow: ServedModel | None = None


@dataclass(frozen=True)
class ServedModel:
    """A resolved model: its name, version, engine adapter (None: the base) and task; under
    a rollout, the request's part in it."""

    name: str
    version: int | None
    lora: LoraTarget | None
    task: TaskSpec | None = None
    rollout: RolloutRoute | None = field(default=None, compare=False)


def lora_target(version: AdapterVersion) -> LoraTarget:
    """The engine's view of a stored version: a fresh id per version, never reused."""
    return LoraTarget(
        name=f"{version.name}@{version.version}",
        lora_int_id=version.lora_int_id,
        path=version.path,
    )


def served_adapter(version: AdapterVersion, rollout: RolloutRoute | None = None) -> ServedModel:
    return ServedModel(
        name=version.name,
        version=version.version,
        lora=lora_target(version),
        task=version.manifest.task,
        rollout=rollout,
    )


class ModelCatalog:
    """Resolves model references against the base model's name and the registry."""

    def __init__(self, base_name: str, registry: AdapterRegistry) -> None:
        self.base = ServedModel(name=base_name, version=None, lora=None)
        self._registry = registry
        self.rollouts = RolloutMonitor(registry)

    def resolve(self, ref: str | None, routing_key: str | None = None) -> ServedModel:
        """The model for `ref`: the base for None or its name, else a registry adapter. A bare
        name under a canary is routed by `routing_key` (default: the request's id, the
        client's `x-request-id` when it sent one), so a retry gets the same version."""
        if ref is None or ref == self.base.name:
            return self.base
        try:
            if "@" not in ref:
                tracker = self.rollouts.track(ref, self._registry.active_rollout(ref))
                if tracker is not None:
                    return self._routed(ref, tracker, routing_key)
            return served_adapter(self._registry.resolve(ref))
        except AdapterNotFound as exc:
            raise ModelNotFound(
                f"Unknown model {ref!r} ({exc}); the base is {self.base.name!r}."
            ) from None

    def _routed(self, name: str, tracker: RolloutTracker, routing_key: str | None) -> ServedModel:
        """`name` under its active rollout. A candidate that cannot be read any more is
        skipped (logged): the request is answered by the current version, never failed."""
        rollout = tracker.rollout
        current = self._registry.resolve(name)
        candidate: AdapterVersion | None = None
        if tracker.routes_candidate:
            try:
                candidate = self._registry.get_version(name, rollout.candidate)
            except AdapterNotFound as exc:
                logger.error("Rollout %d cannot route to its candidate: %s", rollout.id, exc)
        if candidate is not None and rollout.mode is RolloutMode.SHADOW:
            route = RolloutRoute(tracker, Role.CURRENT, shadow=served_adapter(candidate))
            return served_adapter(current, route)
        key = routing_key or request_id.get() or uuid.uuid4().hex
        if candidate is not None and takes_candidate(key, rollout.percent):
            return served_adapter(candidate, RolloutRoute(tracker, Role.CANDIDATE))
        return served_adapter(current, RolloutRoute(tracker, Role.CURRENT))

    def list_models(self) -> list[ServedModel]:
        """The base and every adapter that has a promoted version."""
        adapters = [
            self.resolve(summary.name)
            for summary in self._registry.list_adapters()
            if summary.promoted_version is not None
        ]
        return [self.base, *adapters]
