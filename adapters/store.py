"""Embedded adapter storage: SQLite (WAL) for versions and promotions, content-addressed blobs.

Layout under `root` (`<home>/adapters`):

    registry.db          versions, per-name state, promotion history
    blobs/<digest>/      adapter_config.json + adapter_model.safetensors, shared by versions
    tmp/                 uploads being unpacked and blobs being staged; swept at open
    registry.lock        serialises writers across threads and processes

Every state change is one transaction, and a version row is inserted only after its blob is
fully in place (files and folder fsynced, then renamed), so a crash leaves at worst an orphan
blob or temp folder, removed at the next open. Engine LoRA ids come from an AUTOINCREMENT key:
never reused, even after deletes, so one id never stands for different bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from adapters.errors import AdapterConflict
from adapters.manifest import AdapterManifest
from adapters.validation import ADAPTER_FILES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL,   -- versions are never reused, even after deletes
    promoted INTEGER                 -- version served for a bare name
);
CREATE TABLE IF NOT EXISTS versions (
    lora_int_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL REFERENCES names (name),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS promotions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL
);
"""
_VERSION_COLUMNS = "lora_int_id, name, version, digest, manifest, created_at"
_Row = tuple[int, str, int, str, str, str]


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
    """One adapter name: its versions (oldest first) and the promoted one."""

    model_config = ConfigDict(frozen=True)

    name: str
    promoted_version: int | None
    versions: list[AdapterVersion]


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
    """Persistence for the registry. Reads see consistent WAL snapshots without `locked()`;
    callers hold `locked()` around each change so checks and writes are not interleaved."""

    def __init__(self, root: Path) -> None:
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self._db = root / "registry.db"
        self._lock_path = root / "registry.lock"
        self._thread_lock = threading.Lock()
        self._manifests: dict[int, AdapterManifest] = {}  # rows are immutable, ids never reused
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        # One connection, kept open: opening one costs ~1 ms, too much for `resolve` per request.
        self._conn = sqlite3.connect(
            self._db, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn_lock = threading.Lock()
        with self.locked():
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._sweep()

    def close(self) -> None:
        with self._conn_lock:
            self._conn.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access for one change, across threads and processes."""
        with self._thread_lock, self._lock_path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A fresh empty folder on the store's filesystem, removed afterwards."""
        with tempfile.TemporaryDirectory(dir=self._tmp, prefix="upload-") as work:
            yield Path(work)

    # reads

    def load(self, name: str) -> AdapterDetail | None:
        """The adapter `name`, or None if it has no versions."""
        with self._transaction() as conn:
            state = conn.execute("SELECT promoted FROM names WHERE name = ?", (name,)).fetchone()
            rows = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
        if state is None or not rows:
            return None
        return AdapterDetail(
            name=name, promoted_version=state[0], versions=[self._version(row) for row in rows]
        )

    def load_all(self) -> list[AdapterDetail]:
        """Every adapter with at least one version, by name."""
        with self._transaction() as conn:
            promoted = dict(conn.execute("SELECT name, promoted FROM names").fetchall())
            rows = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY name, version"
            ).fetchall()
        versions: dict[str, list[AdapterVersion]] = {}
        for row in rows:
            versions.setdefault(row[1], []).append(self._version(row))
        return [
            AdapterDetail(name=name, promoted_version=promoted[name], versions=found)
            for name, found in versions.items()
        ]

    def get_version(self, name: str, version: int) -> AdapterVersion | None:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
        return None if row is None else self._version(row)

    def get_promoted(self, name: str) -> AdapterVersion | None:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE (name, version) = "
                "(SELECT name, promoted FROM names WHERE name = ?)",
                (name,),
            ).fetchone()
        return None if row is None else self._version(row)

    # changes: call under locked()

    def add_version(self, manifest: AdapterManifest, folder: Path, digest: str) -> AdapterVersion:
        """Store the PEFT files of `folder` as the next version of `manifest.name`.

        The first version of a name with nothing promoted is promoted in the same transaction.
        """
        placed = self._place_blob(folder, digest)
        try:
            with self._transaction(write=True) as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO names (name, last_version) VALUES (?, 0)",
                    (manifest.name,),
                )
                last, promoted = conn.execute(
                    "SELECT last_version, promoted FROM names WHERE name = ?", (manifest.name,)
                ).fetchone()
                version, created_at = last + 1, datetime.now(UTC)
                stored = manifest.model_copy(
                    update={"version": version, "digest": digest, "created_at": created_at}
                )
                row = (
                    manifest.name,
                    version,
                    digest,
                    stored.model_dump_json(),
                    created_at.isoformat(),
                )
                (lora_int_id,) = conn.execute(
                    "INSERT INTO versions (name, version, digest, manifest, created_at) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING lora_int_id",
                    row,
                ).fetchone()
                conn.execute(
                    "UPDATE names SET last_version = ? WHERE name = ?", (version, manifest.name)
                )
                if promoted is None:
                    self._set_promoted(conn, manifest.name, version)
        except BaseException:
            if placed:
                shutil.rmtree(self._blobs / digest, ignore_errors=True)
            raise
        return self._version((lora_int_id, *row))

    def promote(self, name: str, version: int) -> None:
        """Serve `version` for the bare name; recorded in the history that `rollback` unwinds."""
        with self._transaction(write=True) as conn:
            current = conn.execute("SELECT promoted FROM names WHERE name = ?", (name,)).fetchone()
            if current[0] != version:
                self._set_promoted(conn, name, version)

    def rollback_target(self, name: str) -> int:
        """The version `rollback` would promote, without changing anything."""
        with self._transaction() as conn:
            _, version = self._rollback_plan(conn, name)
        return version

    def rollback(self, name: str) -> int:
        """Promote again the version promoted before the current one and return it."""
        with self._transaction(write=True) as conn:
            superseded, version = self._rollback_plan(conn, name)
            conn.executemany("DELETE FROM promotions WHERE seq = ?", [(s,) for s in superseded])
            conn.execute("UPDATE names SET promoted = ? WHERE name = ?", (version, name))
        return version

    @staticmethod
    def _rollback_plan(conn: sqlite3.Connection, name: str) -> tuple[list[int], int]:
        """(history entries of the current version to drop, the version to promote again)."""
        (current,) = conn.execute("SELECT promoted FROM names WHERE name = ?", (name,)).fetchone()
        history = conn.execute(
            "SELECT seq, version FROM promotions WHERE name = ? ORDER BY seq DESC", (name,)
        ).fetchall()
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
            (promoted,) = conn.execute(
                "SELECT promoted FROM names WHERE name = ?", (name,)
            ).fetchone()
            if promoted == version:
                raise AdapterConflict(
                    f"{name}@{version} is the promoted version; promote another version of "
                    f"{name!r} before deleting it"
                )
            lora_int_id, digest = conn.execute(
                "SELECT lora_int_id, digest FROM versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            conn.execute("DELETE FROM versions WHERE lora_int_id = ?", (lora_int_id,))
            conn.execute("DELETE FROM promotions WHERE name = ? AND version = ?", (name, version))
            shared = conn.execute("SELECT 1 FROM versions WHERE digest = ?", (digest,)).fetchone()
        self._manifests.pop(lora_int_id, None)
        if shared is None:  # a crash before this line leaves an orphan, swept at the next open
            shutil.rmtree(self._blobs / digest, ignore_errors=True)

    # internals

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._conn_lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @staticmethod
    def _set_promoted(conn: sqlite3.Connection, name: str, version: int) -> None:
        conn.execute("UPDATE names SET promoted = ? WHERE name = ?", (version, name))
        conn.execute("INSERT INTO promotions (name, version) VALUES (?, ?)", (name, version))

    def _version(self, row: _Row) -> AdapterVersion:
        lora_int_id, name, version, digest, manifest_json, created_at = row
        manifest = self._manifests.get(lora_int_id)
        if manifest is None:
            manifest = AdapterManifest.model_validate_json(manifest_json)
            self._manifests[lora_int_id] = manifest
        return AdapterVersion(
            name=name,
            version=version,
            lora_int_id=lora_int_id,
            digest=digest,
            path=self._blobs / digest,
            created_at=datetime.fromisoformat(created_at),
            manifest=manifest,
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
        with self._transaction() as conn:
            used = {digest for (digest,) in conn.execute("SELECT DISTINCT digest FROM versions")}
        for blob in self._blobs.iterdir():
            if blob.name not in used:
                shutil.rmtree(blob, ignore_errors=True)


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
