"""One registry for several processes: changes made by one are seen by the others at once,
concurrent writers never collide, and registries written before SQLAlchemy keep their data."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from adapters.base_spec import BaseModelSpec
from adapters.registry import AdapterRegistry
from adapters.store import compute_digest
from adapters.validation import validate_adapter

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit

REPO = Path(__file__).resolve().parents[2]

# A registry in another process: opened on the same home and database, it answers one JSON
# command per line (register, promote, rollback, resolve) with the version it got.
_WORKER = """
import json, sys
from pathlib import Path
from adapters.base_spec import spec_from_hf_config
from adapters.registry import AdapterRegistry

home, base, fingerprint, url = sys.argv[1:]
spec = spec_from_hf_config(Path(base), fingerprint=fingerprint, max_lora_rank=8)
registry = AdapterRegistry(Path(home), spec, database_url=url or None)
actions = {
    "register": lambda path: registry.register(Path(path)).adapter,
    "promote": registry.promote,
    "rollback": registry.rollback,
    "resolve": registry.resolve,
}
print("ready", flush=True)
for line in sys.stdin:
    action, *args = json.loads(line)
    found = actions[action](*args)
    print(json.dumps([found.version, found.lora_int_id]), flush=True)
"""


class Worker:
    """A registry opened in a child process."""

    def __init__(
        self, home: Path, kit: AdapterKit, tmp_path: Path, database_url: str | None
    ) -> None:
        args = [str(home), str(tmp_path / "base"), kit.fingerprint, database_url or ""]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER, *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read() == "ready"

    def send(self, *command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def reply(self) -> tuple[int, int]:
        """(version, lora_int_id) of the oldest command not yet answered."""
        version, lora_int_id = json.loads(self._read())
        return version, lora_int_id

    def call(self, *command: Any) -> tuple[int, int]:
        self.send(*command)
        return self.reply()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0

    def _read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the worker exited ({self.process.wait(timeout=60)})"
        return line.strip()


@pytest.fixture
def worker_factory(
    home: Path, kit: AdapterKit, tmp_path: Path, database_url: str | None
) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        started.append(Worker(home, kit, tmp_path, database_url))
        return started[-1]

    yield start
    for worker in started:
        worker.process.kill()
        worker.process.wait()


def test_a_change_in_one_process_is_seen_by_another_at_once(
    registry: AdapterRegistry, kit: AdapterKit, worker_factory: Callable[[], Worker]
) -> None:
    for seed in range(3):
        registry.register(kit.tar_gz(kit.folder(seed=seed)))
    other = worker_factory()
    assert other.call("resolve", "intent") == (1, 1)

    registry.promote("intent", 2)
    assert other.call("resolve", "intent") == (2, 2)  # the very next resolve, no waiting
    assert other.call("promote", "intent", 3) == (3, 3)
    assert registry.resolve("intent").version == 3
    assert other.call("rollback", "intent") == (2, 2)
    assert registry.resolve("intent").version == 2
    assert registry.rollback("intent").version == 1
    assert other.call("resolve", "intent") == (1, 1)

    fresh = other.call("register", str(kit.tar_gz(kit.folder(seed=9))))
    assert fresh == (4, 4)
    assert registry.resolve("intent@4").lora_int_id == 4
    other.close()


def test_concurrent_publish_and_promote_from_several_processes(
    registry: AdapterRegistry, kit: AdapterKit, worker_factory: Callable[[], Worker]
) -> None:
    per_worker = 3
    workers = [worker_factory() for _ in range(3)]
    archives = [
        [kit.tar_gz(kit.folder(seed=10 * w + i)) for i in range(per_worker)]
        for w in range(len(workers))
    ]
    for worker, own in zip(workers, archives, strict=True):  # all queued before any answers
        for archive in own:
            worker.send("register", str(archive))
    registered = [[w.reply() for _ in range(per_worker)] for w in workers]
    for worker, got in zip(workers, registered, strict=True):
        for version, _ in got:
            worker.send("promote", "intent", version)
    promoted = [[w.reply() for _ in range(per_worker)] for w in workers]
    for worker in workers:
        worker.close()

    results = [pair for got in registered for pair in got]
    total = per_worker * len(workers)
    assert sorted(version for version, _ in results) == list(range(1, total + 1))
    assert sorted(lora_int_id for _, lora_int_id in results) == list(range(1, total + 1))
    assert promoted == registered
    detail = registry.get("intent")
    assert [v.version for v in detail.versions] == list(range(1, total + 1))
    assert detail.promoted_version in {version for version, _ in results}
    assert registry.rollback("intent").version != detail.promoted_version


# The schema the SQLite-only store (before SQLAlchemy) created, verbatim.
_SCHEMA_BEFORE_SQLALCHEMY = """
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL,
    promoted INTEGER
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


def test_a_sqlite_registry_written_before_sqlalchemy_keeps_its_data(
    home: Path, kit: AdapterKit, base_spec: BaseModelSpec
) -> None:
    store = home / "adapters"
    (store / "blobs").mkdir(parents=True)
    conn = sqlite3.connect(store / "registry.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA_BEFORE_SQLALCHEMY)
    conn.execute("INSERT INTO names VALUES ('intent', 3, 2)")
    for version in (1, 2, 3):
        folder = kit.folder(seed=version)
        digest = compute_digest(folder)
        created_at = datetime.now(UTC)
        manifest = validate_adapter(folder, base_spec).model_copy(
            update={"version": version, "digest": digest, "created_at": created_at}
        )
        (store / "blobs" / digest).mkdir()
        for file_name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(folder / file_name, store / "blobs" / digest / file_name)
        conn.execute(
            "INSERT INTO versions (name, version, digest, manifest, created_at) "
            "VALUES ('intent', ?, ?, ?, ?)",
            (version, digest, manifest.model_dump_json(), created_at.isoformat()),
        )
    conn.execute("DELETE FROM versions WHERE version = 3")  # its id (3) must stay used
    conn.executemany("INSERT INTO promotions (name, version) VALUES ('intent', ?)", [(1,), (2,)])
    conn.close()

    registry = AdapterRegistry(home, base_spec)
    try:
        detail = registry.get("intent")
        assert detail.promoted_version == 2 and [v.version for v in detail.versions] == [1, 2]
        resolved = registry.resolve("intent")
        assert (resolved.version, resolved.lora_int_id) == (2, 2) and resolved.path.is_dir()
        assert resolved.manifest.task.labels == ["buy", "sell"]
        fresh = registry.register(kit.tar_gz(kit.folder(seed=7))).adapter
        assert (fresh.version, fresh.lora_int_id) == (4, 4)  # neither reused
        assert registry.rollback("intent").version == 1  # the old promotion history
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://user@db/hotswap", "supports sqlite and postgresql databases, not 'mysql'"),
        ("not a url", "not a database URL"),
    ],
)
def test_an_unsupported_database_url_is_refused(
    home: Path, base_spec: BaseModelSpec, url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AdapterRegistry(home, base_spec, database_url=url)
    assert not home.exists()  # refused before anything was created
