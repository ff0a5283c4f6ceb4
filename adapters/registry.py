"""The adapter registry: upload, version, promote and resolve task adapters for one base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from adapters.archive import ArchiveLimits, extract_archive
from adapters.base_spec import BaseModelSpec
from adapters.database import database_url as registry_database_url
from adapters.errors import AdapterConflict, AdapterNotFound
from adapters.manifest import MAX_VERSION, AdapterManifest
from adapters.rollouts import Rollout, RolloutMode, RolloutState, RolloutStore
from adapters.store import AdapterDetail, AdapterStore, AdapterVersion, compute_digest
from adapters.validation import SchemaCheck, validate_adapter

ResolvedAdapter = AdapterVersion
"""What `resolve` returns: the name, version, engine LoRA id and path the engine loads."""

_ASSIGNED_FIELDS = {"version", "digest", "created_at"}


class RegisterResult(BaseModel):
    """The outcome of an upload: the stored version, and whether it is new."""

    model_config = ConfigDict(frozen=True)

    adapter: AdapterVersion
    created: bool

    @property
    def manifest(self) -> AdapterManifest:
        return self.adapter.manifest


class AdapterSummary(BaseModel):
    """One line of the adapter listing."""

    model_config = ConfigDict(frozen=True)

    name: str
    promoted_version: int | None
    versions: list[int]
    description: str


class AdapterRegistry:
    """Adapters stored under `home/adapters`, validated against the served base model.

    Versions of a name are numbered 1, 2, ... (up to MAX_VERSION) and never renumbered or
    reused; a version number from outside is range-checked before any database call. The
    first version registered under a name with nothing promoted is promoted automatically
    unless `register` is told not to (the server promotes only once the engine has loaded
    it). A stored version that cannot be read is quarantined by the store: left out of
    listing and resolving, and named as such when asked for. Safe to call from several threads
    and processes, and from several machines when they share `store_dir` and a PostgreSQL
    `database_url`: changes are serialised, reads never wait for an upload, and `resolve`
    reads the promoted version from the database, so a promote committed anywhere is seen
    by the next `resolve` everywhere.
    """

    def __init__(
        self,
        home: Path,
        base: BaseModelSpec,
        limits: ArchiveLimits | None = None,
        schema_check: SchemaCheck | None = None,
        *,
        database_url: str | None = None,
        store_dir: Path | None = None,
    ) -> None:
        """`database_url`: SQLAlchemy URL of the metadata database (sqlite or postgresql),
        default SQLite in the store folder; `store_dir`: the adapter files (and default
        database), default `home/adapters`."""
        root = store_dir or home / "adapters"
        self._store = AdapterStore(root, database_url)  # creates every table first
        self._rollouts = RolloutStore(registry_database_url(database_url, root / "registry.db"))
        self._base = base
        self._limits = limits or ArchiveLimits()
        self._schema_check = schema_check

    def close(self) -> None:
        """Release the database connections; the registry is unusable afterwards."""
        self._rollouts.close()
        self._store.close()

    def register(
        self,
        archive_path: Path,
        *,
        name: str | None = None,
        description: str | None = None,
        promote_first: bool = True,
    ) -> RegisterResult:
        """Validate and store an uploaded `.tar.gz`, `.tar` or `.zip` of a PEFT LoRA folder.

        The name comes from `name`, else from the archive's `hotswap.json`; `description`
        likewise overrides the manifest's. Uploading what an existing version of that name
        already holds (same weights and manifest) returns that version with `created=False`.
        `promote_first`: promote the new version when the name has nothing promoted.
        Raises AdapterRejected naming the problem; nothing is stored then.
        """
        with self._store.locked(), self._store.workspace() as work:
            folder = extract_archive(archive_path, work, self._limits)
            manifest = validate_adapter(
                folder,
                self._base,
                name=name,
                description=description,
                schema_check=self._schema_check,
            )
            digest = compute_digest(folder)
            detail = self._store.load(manifest.name)
            for existing in detail.versions if detail else []:
                if existing.digest == digest and _same_upload(existing.manifest, manifest):
                    return RegisterResult(adapter=existing, created=False)
            added = self._store.add_version(manifest, folder, digest, promote_first=promote_first)
            return RegisterResult(adapter=added, created=True)

    def list_adapters(self) -> list[AdapterSummary]:
        """Every adapter name with a readable version, with those versions, by name; the
        promoted version is None while it is quarantined."""
        return [
            AdapterSummary(
                name=detail.name,
                promoted_version=None
                if detail.promoted_version in detail.quarantined
                else detail.promoted_version,
                versions=[v.version for v in detail.versions],
                description=_current(detail).manifest.description,
            )
            for detail in self._store.load_all()
            if detail.versions
        ]

    def get(self, name: str) -> AdapterDetail:
        """The readable versions of `name`, which one is promoted, and the quarantined ones."""
        detail = self._store.load(name)
        if detail is None:
            raise self._name_not_found(name)
        if not detail.versions:
            raise AdapterNotFound(
                f"adapter {name!r} has no readable version: {_quarantine_list(detail)}"
            )
        return detail

    def get_version(self, name: str, version: int) -> AdapterVersion:
        """One version of `name`; the not-found message lists the versions that exist, or
        says why the version is quarantined."""
        _check_version(version)
        found = self._store.get_version(name, version)
        if found is None:
            reason = self._store.quarantine_reason(name, version)
            if reason is not None:
                raise AdapterNotFound(_quarantined(name, version, reason))
            detail = self.get(name)
            versions = ", ".join(str(v.version) for v in detail.versions)
            raise AdapterNotFound(f"adapter {name!r} has no version {version}; it has {versions}")
        return found

    def promote(self, name: str, version: int) -> AdapterVersion:
        """Serve `version` when requests name the adapter without a version. A rollout of the
        name ends with it, in the same transaction: `promoted` when `version` is its
        candidate, else `aborted`."""
        with self._store.locked():
            promoted = self.get_version(name, version)
            active = self._rollouts.active(name)
            if active is None:
                self._store.promote(name, version)
            else:
                state = (
                    RolloutState.PROMOTED if version == active.candidate else RolloutState.ABORTED
                )
                reason = f"{name}@{version} promoted by hand"
                self._rollouts.finish(active.id, state, reason, {}, promote=version)
        return promoted

    def rollback_target(self, name: str) -> AdapterVersion:
        """The version `rollback` would promote now (so a server can load it first);
        AdapterConflict while a rollout of the name runs."""
        self.get(name)
        self._no_rollout(name, "roll back")
        return self.get_version(name, self._store.rollback_target(name))

    def rollback(self, name: str) -> AdapterVersion:
        """Promote again the version that was promoted before the current one.

        Raises AdapterConflict when there is none (e.g. only the first version was ever
        promoted, or the earlier ones were deleted), or while a rollout of the name runs.
        """
        with self._store.locked():
            target = self.rollback_target(name)
            self._store.rollback(name)
        return target

    def delete(self, name: str, version: int) -> None:
        """Delete a version, quarantined ones included; AdapterConflict if it is the
        promoted one or on trial in a rollout."""
        _check_version(version)
        with self._store.locked():
            active = self._rollouts.active(name)
            if active is not None and version == active.candidate:
                raise AdapterConflict(
                    f"{name}@{version} is on trial in rollout {active.id}; abort it first"
                )
            stored = self._store.get_version(name, version)
            if stored is None and self._store.quarantine_reason(name, version) is None:
                self.get_version(name, version)  # raises the not-found message
            self._store.delete(name, version)

    def start_rollout(
        self,
        name: str,
        version: int,
        mode: RolloutMode,
        percent: float,
        gates: dict[str, Any],
    ) -> Rollout:
        """Put `name@version` on trial against the promoted version (`gates` as the server
        validated them, stored with the rollout). AdapterConflict when nothing readable is
        promoted, when `version` is the promoted one, or when a rollout of the name runs."""
        with self._store.locked():
            self.get_version(name, version)
            detail = self.get(name)
            baseline = detail.promoted_version
            if baseline is None or baseline in detail.quarantined:
                raise AdapterConflict(
                    f"adapter {name!r} has no servable promoted version to compare with; "
                    f"promote {name}@{version} directly instead"
                )
            if baseline == version:
                raise AdapterConflict(f"{name}@{version} is already the promoted version")
            return self._rollouts.start(name, version, baseline, mode, percent, gates)

    def active_rollout(self, name: str) -> Rollout | None:
        """The rollout of `name` running now, as the database holds it (one query)."""
        return self._rollouts.active(name)

    def rollouts(self, name: str) -> list[Rollout]:
        """Every rollout of `name`, oldest first, with its transitions."""
        self.get(name)  # AdapterNotFound naming what exists
        return self._rollouts.of_name(name)

    def finish_rollout(
        self, rollout: Rollout, state: RolloutState, reason: str, figures: dict[str, Any]
    ) -> bool:
        """End `rollout` in `state` (`promoted` promotes its candidate in the same
        transaction); False when it had already ended (the first decision wins)."""
        promote = rollout.candidate if state is RolloutState.PROMOTED else None
        with self._store.locked():
            return self._rollouts.finish(rollout.id, state, reason, figures, promote=promote)

    def end_rollout(self, name: str, state: RolloutState, reason: str) -> Rollout:
        """A person ends the active rollout of `name` (`promoted` or `aborted`); returns it
        as ended. AdapterConflict when none is active."""
        with self._store.locked():
            active = self._rollouts.active(name)
            if active is None:
                self.get(name)
                raise AdapterConflict(f"adapter {name!r} has no active rollout")
            promote = active.candidate if state is RolloutState.PROMOTED else None
            self._rollouts.finish(active.id, state, reason, {}, promote=promote)
        (ended,) = [r for r in self._rollouts.of_name(name) if r.id == active.id]
        return ended

    def _no_rollout(self, name: str, change: str) -> None:
        active = self._rollouts.active(name)
        if active is not None:
            raise AdapterConflict(
                f"cannot {change} {name!r} while rollout {active.id} of version "
                f"{active.candidate} runs; promote or abort the rollout first"
            )

    def resolve(self, ref: str) -> ResolvedAdapter:
        """`name` (its promoted version) or `name@version` (pinned) to what the engine loads."""
        name, pinned, version = ref.partition("@")
        if not pinned:
            found = self._store.get_promoted(name)
            if found is None:
                raise self._promoted_not_found(name)
            return found
        if not (version.isascii() and version.isdigit()):
            raise AdapterNotFound(
                f"{ref!r} is not an adapter reference: use NAME or NAME@VERSION, e.g. 'intent@2'"
            )
        if len(version) > len(str(MAX_VERSION)):  # before int(): no 5000-digit conversions
            raise AdapterNotFound(_VERSION_RANGE)
        return self.get_version(name, int(version))

    def _promoted_not_found(self, name: str) -> AdapterNotFound:
        detail = self._store.load(name)
        if detail is not None and detail.promoted_version in detail.quarantined:
            promoted = detail.promoted_version
            return AdapterNotFound(
                _quarantined(name, promoted, detail.quarantined[promoted])
                + f"; promote another version of {name!r}"
            )
        return self._name_not_found(name)

    def _name_not_found(self, name: str) -> AdapterNotFound:
        listing = ", ".join(
            f"{d.name} (versions {', '.join(str(v.version) for v in d.versions)}; "
            f"promoted {d.promoted_version})"
            for d in self._store.load_all()
            if d.versions
        )
        return AdapterNotFound(
            f"no adapter named {name!r}; "
            + (f"registered: {listing}" if listing else "none are registered")
        )


_VERSION_RANGE = f"adapter versions are whole numbers from 1 to {MAX_VERSION}"


def _check_version(version: int) -> None:
    """AdapterNotFound for a version number no adapter can have (the value is not echoed:
    it may have thousands of digits)."""
    if not 1 <= version <= MAX_VERSION:
        raise AdapterNotFound(f"no such adapter version: {_VERSION_RANGE}")


def _quarantined(name: str, version: int, reason: str) -> str:
    return f"{name}@{version} is quarantined: {reason}"


def _quarantine_list(detail: AdapterDetail) -> str:
    return "; ".join(
        _quarantined(detail.name, version, reason)
        for version, reason in sorted(detail.quarantined.items())
    )


def _current(detail: AdapterDetail) -> AdapterVersion:
    """The promoted version, else the latest."""
    by_version = {v.version: v for v in detail.versions}
    return by_version.get(detail.promoted_version or 0, detail.versions[-1])


def _same_upload(stored: AdapterManifest, uploaded: AdapterManifest) -> bool:
    return stored.model_dump(exclude=_ASSIGNED_FIELDS) == uploaded.model_dump(
        exclude=_ASSIGNED_FIELDS
    )
