"""Adapter storage: versions and promotions in a database, content-addressed blobs on disk.

Layout under `root` (`<home>/adapters`, or a folder every replica shares):

    registry.db          versions, per-name state, promotion history (SQLite, the default;
                         PostgreSQL instead when a database URL is given)
    blobs/<digest>/      adapter_config.json + adapter_model.safetensors, shared by versions
    tmp/                 uploads being unpacked and blobs being staged; swept at open
    registry.lock        serialises writers across threads and processes (SQLite)

Every state change is one transaction, and a version row is inserted only after its blob is
fully in place (files and folder fsynced, then renamed), so a crash leaves at worst an orphan
blob or temp folder, removed at the next open. Engine LoRA ids come from an auto-increment key
(SQLite AUTOINCREMENT, a PostgreSQL sequence): never reused, even after deletes, so one id
never stands for different bytes. Reads go to the database every time: a promote committed by
any process is what the next `get_promoted` anywhere returns.

A manifest is stored only once it reads back unchanged. A row that still cannot be read (a
manifest invalid under today's model, a missing blob folder) is quarantined: logged once, left
out of every read, and never an error for the other rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Row, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from adapters.database import (
    WRITE,
    create_tables,
    database_url,
    names,
    open_database,
    promotions,
    versions,
    writer_lock,
)
from adapters.errors import AdapterConflict, AdapterRejected
from adapters.manifest import AdapterManifest
from adapters.validation import ADAPTER_FILES, describe_errors

logger = logging.getLogger(__name__)

_VERSION_COLUMNS = (
    versions.c.lora_int_id,
    versions.c.name,
    versions.c.version,
    versions.c.digest,
    versions.c.manifest,
    versions.c.created_at,
)
_AnyRow = Row[*tuple[Any, ...]]
# Reads are built once: each is one statement, so it sees one consistent state by itself.
_WITH_PROMOTED = select(*_VERSION_COLUMNS, names.c.promoted).join(
    names, names.c.name == versions.c.name
)
_LOAD_ALL = _WITH_PROMOTED.order_by(versions.c.name, versions.c.version)
_LOAD = _WITH_PROMOTED.where(versions.c.name == bindparam("name")).order_by(versions.c.version)
_GET_VERSION = select(*_VERSION_COLUMNS).where(
    versions.c.name == bindparam("name"), versions.c.version == bindparam("version")
)
_GET_PROMOTED = (
    select(*_VERSION_COLUMNS)
    .join(names, names.c.name == versions.c.name)
    .where(names.c.name == bindparam("name"), versions.c.version == names.c.promoted)
)


class AdapterVersion(BaseModel):
    """One stored version: what the engine needs to load it, and its manifest."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    lora_int_id: int
    digest: str
    path: Path
    created_at: datetime
    manifest: AdapterManifest


class AdapterDetail(BaseModel):
    """One adapter name: its readable versions (oldest first), the promoted one (which may be
    quarantined) and the quarantined versions with the reason each cannot be read."""

    model_config = ConfigDict(frozen=True)

    name: str
    promoted_version: int | None
    versions: list[AdapterVersion]
    quarantined: dict[int, str] = Field(default_factory=dict)


def compute_digest(folder: Path) -> str:
    """sha256 (hex) over the PEFT files in `folder`: each file's name, size and bytes, by name."""
    digest = hashlib.sha256()
    for file_name in sorted(ADAPTER_FILES):
        path = folder / file_name
        digest.update(file_name.encode() + b"\0" + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class AdapterStore:
    """Persistence for the registry. Reads are single statements in autocommit mode, so each
    sees one consistent state without `locked()`; callers hold `locked()` around each change
    so checks and writes are not interleaved, and write transactions also lock the name's row
    (FOR UPDATE)."""

    def __init__(self, root: Path, database: str | None = None) -> None:
        """Blobs under `root`; metadata in the database at URL `database` (sqlite or
        postgresql), by default SQLite at `root/registry.db`."""
        url = database_url(database, root / "registry.db")  # a bad URL fails before any change
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self._lock_path = root / "registry.lock"
        self._thread_lock = threading.Lock()
        self._manifests: dict[int, AdapterManifest] = {}  # rows are immutable, ids never reused
        self._quarantined: dict[tuple[str, int], str] = {}  # (name, version) -> reason
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        self._engine = open_database(url)
        self._writer = self._engine.execution_options(**WRITE)
        self._reader = open_database(url, autocommit=True)
        self._insert: Any = (
            postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        )
        with self.locked():
            create_tables(self._engine)
            self._sweep()

    def close(self) -> None:
        self._engine.dispose()
        self._reader.dispose()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access for one change, across threads, processes and (PostgreSQL) hosts."""
        with self._thread_lock, writer_lock(self._engine, self._lock_path):
            yield

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A fresh empty folder on the store's filesystem, removed afterwards."""
        with tempfile.TemporaryDirectory(dir=self._tmp, prefix="upload-") as work:
            yield Path(work)

    # reads

    def load(self, name: str) -> AdapterDetail | None:
        """The adapter `name`, or None if it has no versions."""
        with self._read() as conn:
            rows = conn.execute(_LOAD, {"name": name}).all()
        return self._detail(name, rows) if rows else None

    def load_all(self) -> list[AdapterDetail]:
        """Every adapter with at least one version, by name."""
        with self._read() as conn:
            rows = conn.execute(_LOAD_ALL).all()
        found: dict[str, list[_AnyRow]] = {}
        for row in rows:
            found.setdefault(row.name, []).append(row)
        return [self._detail(name, group) for name, group in found.items()]

    def get_version(self, name: str, version: int) -> AdapterVersion | None:
        """The version, or None when it does not exist or is quarantined."""
        with self._read() as conn:
            row = conn.execute(_GET_VERSION, {"name": name, "version": version}).first()
        return None if row is None else self._version(row)

    def get_promoted(self, name: str) -> AdapterVersion | None:
        """The promoted version as the database holds it now: one query, one round trip.
        None when nothing is promoted or the promoted version is quarantined."""
        with self._read() as conn:
            row = conn.execute(_GET_PROMOTED, {"name": name}).first()
        return None if row is None else self._version(row)

    def quarantine_reason(self, name: str, version: int) -> str | None:
        """Why `name@version` is quarantined, if a read of this store found it unreadable."""
        return self._quarantined.get((name, version))

    # changes: call under locked()

    def add_version(
        self, manifest: AdapterManifest, folder: Path, digest: str, *, promote_first: bool
    ) -> AdapterVersion:
        """Store the PEFT files of `folder` as the next version of `manifest.name`.

        `promote_first`: promote it in the same transaction when the name has nothing promoted.
        """
        placed = self._place_blob(folder, digest)
        try:
            with self._transaction(write=True) as conn:
                conn.execute(
                    self._insert(names)
                    .values(name=manifest.name, last_version=0)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
                last, promoted = self._lock_name(conn, manifest.name)
                version, created_at = last + 1, datetime.now(UTC)
                stored = manifest.model_copy(
                    update={"version": version, "digest": digest, "created_at": created_at}
                )
                values = {
                    "name": manifest.name,
                    "version": version,
                    "digest": digest,
                    "manifest": _readable_json(stored),
                    "created_at": created_at.isoformat(),
                }
                row = conn.execute(
                    versions.insert().values(**values).returning(*_VERSION_COLUMNS)
                ).one()
                conn.execute(
                    update(names).where(names.c.name == manifest.name).values(last_version=version)
                )
                if promote_first and promoted is None:
                    self._set_promoted(conn, manifest.name, version)
        except BaseException:
            if placed:
                shutil.rmtree(self._blobs / digest, ignore_errors=True)
            raise
        self._manifests[row.lora_int_id] = stored
        added = self._version(row)
        assert added is not None  # its manifest reads back and its blob is in place
        return added

    def promote(self, name: str, version: int) -> None:
        """Serve `version` for the bare name; recorded in the history that `rollback` unwinds."""
        with self._transaction(write=True) as conn:
            _, current = self._lock_name(conn, name)
            if current != version:
                self._set_promoted(conn, name, version)

    def rollback_target(self, name: str) -> int:
        """The version `rollback` would promote, without changing anything."""
        with self._transaction() as conn:
            _, current = self._lock_name(conn, name, for_update=False)
            _, version = self._rollback_plan(conn, name, current)
        return version

    def rollback(self, name: str) -> int:
        """Promote again the version promoted before the current one and return it."""
        with self._transaction(write=True) as conn:
            _, current = self._lock_name(conn, name)
            superseded, version = self._rollback_plan(conn, name, current)
            if superseded:
                conn.execute(delete(promotions).where(promotions.c.seq.in_(superseded)))
            conn.execute(update(names).where(names.c.name == name).values(promoted=version))
        return version

    @staticmethod
    def _rollback_plan(conn: Connection, name: str, current: int | None) -> tuple[list[int], int]:
        """(history entries of the current version to drop, the version to promote again)."""
        history = conn.execute(
            select(promotions.c.seq, promotions.c.version)
            .where(promotions.c.name == name)
            .order_by(promotions.c.seq.desc())
        ).all()
        superseded: list[int] = []
        for seq, version in history:
            if version != current:
                return superseded, int(version)
            superseded.append(seq)
        raise AdapterConflict(
            f"adapter {name!r} has no earlier promoted version to roll back to "
            f"(v{current} is promoted); promote a version explicitly instead"
        )

    def delete(self, name: str, version: int) -> None:
        """Remove a version that is not promoted; its blob goes when no version shares it."""
        with self._transaction(write=True) as conn:
            _, promoted = self._lock_name(conn, name)
            if promoted == version:
                raise AdapterConflict(
                    f"{name}@{version} is the promoted version; promote another version of "
                    f"{name!r} before deleting it"
                )
            lora_int_id, digest = conn.execute(
                select(versions.c.lora_int_id, versions.c.digest).where(
                    versions.c.name == name, versions.c.version == version
                )
            ).one()
            conn.execute(delete(versions).where(versions.c.lora_int_id == lora_int_id))
            conn.execute(
                delete(promotions).where(promotions.c.name == name, promotions.c.version == version)
            )
            shared = conn.execute(
                select(versions.c.lora_int_id).where(versions.c.digest == digest).limit(1)
            ).first()
        self._manifests.pop(lora_int_id, None)
        if shared is None:  # a crash before this line leaves an orphan, swept at the next open
            shutil.rmtree(self._blobs / digest, ignore_errors=True)

    # internals

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A pooled autocommit connection, for single-statement reads: no BEGIN and COMMIT
        around them (on PostgreSQL, one round trip instead of three)."""
        with self._reader.connect() as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction on a pooled connection; on SQLite a write one begins IMMEDIATE."""
        with (self._writer if write else self._engine).begin() as conn:
            yield conn

    @staticmethod
    def _lock_name(
        conn: Connection, name: str, *, for_update: bool = True
    ) -> tuple[int, int | None]:
        """(last_version, promoted) of `name`, its row locked until the transaction ends
        (PostgreSQL; SQLite's write transaction already holds the database's write lock)."""
        query = select(names.c.last_version, names.c.promoted).where(names.c.name == name)
        last, promoted = conn.execute(query.with_for_update() if for_update else query).one()
        return int(last), promoted

    @staticmethod
    def _set_promoted(conn: Connection, name: str, version: int) -> None:
        conn.execute(update(names).where(names.c.name == name).values(promoted=version))
        conn.execute(promotions.insert().values(name=name, version=version))

    def _detail(self, name: str, rows: Sequence[_AnyRow]) -> AdapterDetail:
        readable = [(row.version, self._version(row)) for row in rows]
        return AdapterDetail(
            name=name,
            promoted_version=rows[0].promoted,
            versions=[version for _, version in readable if version is not None],
            quarantined={
                number: self._quarantined[(name, number)]
                for number, version in readable
                if version is None
            },
        )

    def _version(self, row: _AnyRow) -> AdapterVersion | None:
        """The row as a version, or None when it is quarantined (logged the first time)."""
        key = (row.name, row.version)
        if key in self._quarantined:
            return None
        try:
            manifest = self._manifests.get(row.lora_int_id)
            if manifest is None:
                manifest = AdapterManifest.model_validate_json(row.manifest)
                self._manifests[row.lora_int_id] = manifest
            version = AdapterVersion(
                name=row.name,
                version=row.version,
                lora_int_id=row.lora_int_id,
                digest=row.digest,
                path=self._blobs / row.digest,
                created_at=datetime.fromisoformat(row.created_at),
                manifest=manifest,
            )
        except ValidationError as exc:
            reason = f"its manifest is invalid: {describe_errors(exc)}"
        except (ValueError, TypeError, RecursionError) as exc:
            reason = f"its row is unreadable ({type(exc).__name__})"
        else:
            if version.path.is_dir():
                return version
            reason = f"its files are missing (blobs/{row.digest})"
        self._quarantine(key, reason)
        return None

    def _quarantine(self, key: tuple[str, int], reason: str) -> None:
        if self._quarantined.setdefault(key, reason) is reason:
            logger.error(
                "Quarantined adapter %s@%d: %s. It is left out of listing and resolving; "
                "delete it or promote another version.",
                *key,
                reason,
            )

    def _place_blob(self, folder: Path, digest: str) -> bool:
        """Put the PEFT files at blobs/<digest>, durably; False if they were already there."""
        blob = self._blobs / digest
        if blob.is_dir():
            return False
        stage = Path(tempfile.mkdtemp(dir=self._tmp, prefix="blob-"))
        try:
            for file_name in ADAPTER_FILES:
                _copy_synced(folder / file_name, stage / file_name)
            _fsync_dir(stage)
            stage.rename(blob)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _fsync_dir(self._blobs)
        return True

    def _sweep(self) -> None:
        """Remove what a crashed writer left: temp folders and blobs no version refers to."""
        for leftover in self._tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        with self._read() as conn:
            used = set(conn.execute(select(versions.c.digest).distinct()).scalars())
        for blob in self._blobs.iterdir():
            if blob.name not in used:
                shutil.rmtree(blob, ignore_errors=True)


def _readable_json(manifest: AdapterManifest) -> str:
    """`manifest` as stored JSON, refused unless it reads back as the same manifest."""
    text = manifest.model_dump_json()
    try:
        readable = AdapterManifest.model_validate_json(text) == manifest
    except ValidationError as exc:
        raise AdapterRejected(f"the manifest cannot be stored: {describe_errors(exc)}") from exc
    if not readable:
        raise AdapterRejected("the manifest cannot be stored: it does not read back unchanged")
    return text


def _copy_synced(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
