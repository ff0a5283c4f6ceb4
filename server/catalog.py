"""What a request can address in `model` / `adapter`: the base model, or an adapter of the
registry by `name` (its promoted version) or `name@version` (pinned)."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.errors import AdapterNotFound
from adapters.manifest import TaskSpec
from adapters.registry import AdapterRegistry
from adapters.store import AdapterVersion
from server.engine import LoraTarget
from server.errors import ModelNotFound


@dataclass(frozen=True)
class ServedModel:
    """A resolved model: its name, version, engine adapter (None: the base) and task."""

    name: str
    version: int | None
    lora: LoraTarget | None
    task: TaskSpec | None = None


def lora_target(version: AdapterVersion) -> LoraTarget:
    """The engine's view of a stored version: a fresh id per version, never reused."""
    return LoraTarget(
        name=f"{version.name}@{version.version}",
        lora_int_id=version.lora_int_id,
        path=version.path,
    )


def served_adapter(version: AdapterVersion) -> ServedModel:
    return ServedModel(
        name=version.name,
        version=version.version,
        lora=lora_target(version),
        task=version.manifest.task,
    )


class ModelCatalog:
    """Resolves model references against the base model's name and the registry."""

    def __init__(self, base_name: str, registry: AdapterRegistry) -> None:
        self.base = ServedModel(name=base_name, version=None, lora=None)
        self._registry = registry

    def resolve(self, ref: str | None) -> ServedModel:
        """The model for `ref`: the base for None or its name, else a registry adapter."""
        if ref is None or ref == self.base.name:
            return self.base
        try:
            return served_adapter(self._registry.resolve(ref))
        except AdapterNotFound as exc:
            raise ModelNotFound(
                f"Unknown model {ref!r} ({exc}); the base is {self.base.name!r}."
            ) from None

    def list_models(self) -> list[ServedModel]:
        """The base and every adapter that has a promoted version."""
        adapters = [
            self.resolve(summary.name)
            for summary in self._registry.list_adapters()
            if summary.promoted_version is not None
        ]
        return [self.base, *adapters]
