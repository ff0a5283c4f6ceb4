"""The registry's database through SQLAlchemy: its tables, and opening SQLite or PostgreSQL.

One schema and one code path for both. SQLite (a file next to the blobs) is the embedded
default; PostgreSQL, named by a URL, lets replicas on several machines share one registry.
The first three tables are exactly those the SQLite-only store created, so registries
written before SQLAlchemy open unchanged; `rollouts` and `rollout_events` (safe rollouts of
versions, `adapters/rollouts.py`) are created in older databases when they next open.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

metadata = MetaData()

names = Table(
    "names",
    metadata,
    Column("name", Text, primary_key=True),
    Column("last_version", Integer, nullable=False),  # versions are never reused
    Column("promoted", Integer),  # the version served for a bare name
)

versions = Table(
    "versions",
    metadata,
    Column("lora_int_id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, ForeignKey("names.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("digest", Text, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    UniqueConstraint("name", "version"),
    sqlite_autoincrement=True,  # ids of deleted rows are never handed out again
)

promotions = Table(
    "promotions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    sqlite_autoincrement=True,
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, ForeignKey("names.name"), nullable=False),
    Column("candidate", Integer, nullable=False),  # the version on trial
    Column("baseline", Integer, nullable=False),  # the version promoted when it started
    Column("mode", Text, nullable=False),  # canary | shadow
    Column("percent", Float, nullable=False),  # canary share of the name's requests; 0: shadow
    Column("gates", Text, nullable=False),  # JSON, as the server validated them
    Column("state", Text, nullable=False),  # active | promoted | rolled_back | aborted
    Column("started_at", Text, nullable=False),
    Column("ended_at", Text),
    Column("reason", Text),  # why it ended
    # at most one active rollout per name, enforced by the database itself
    Index(
        "rollouts_one_active",
        "name",
        unique=True,
        sqlite_where=text("state = 'active'"),
        postgresql_where=text("state = 'active'"),
    ),
    sqlite_autoincrement=True,
)

rollout_events = Table(
    "rollout_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", Integer, ForeignKey("rollouts.id"), nullable=False, index=True),
    Column("at", Text, nullable=False),
    Column("kind", Text, nullable=False),  # started | promoted | rolled_back | aborted
    Column("reason", Text, nullable=False),
    Column("figures", Text, nullable=False),  # JSON: the comparison behind the transition
    sqlite_autoincrement=True,
)

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
WRITE = {"hotswap_write": True}
"""Execution options of a write transaction: on SQLite it starts with BEGIN IMMEDIATE."""

_WRITER_LOCK_KEY = 0x686F7473776170  # pg_advisory_lock key: "hotswap" in ASCII


def database_url(url: str | None, default_sqlite: Path) -> URL:
    """The SQLAlchemy URL to open: `url` (sqlite or postgresql), else the SQLite file."""
    if url is None:
        return URL.create("sqlite", database=str(default_sqlite))
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "the registry database URL is not a database URL; use e.g. "
            "postgresql://user:password@host:5432/hotswap or sqlite:////path/registry.db"
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"the registry supports {' and '.join(SUPPORTED_BACKENDS)} databases, "
            f"not {parsed.get_backend_name()!r}"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver installed with us
    return parsed


def open_database(url: URL, *, autocommit: bool = False) -> Engine:
    """An engine for `url`. `autocommit`: for single-statement reads, which then need no
    BEGIN/COMMIT (set once per connection, never toggled per checkout). SQLite connections
    use WAL and full fsync, and transactions begin explicitly."""
    options: dict[str, Any] = {}
    if autocommit:  # nothing to roll back when a connection returns to the pool
        options = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    if url.get_backend_name() != "sqlite":
        return create_engine(url, **options)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **options)
    event.listen(engine, "connect", _sqlite_connect)
    if not autocommit:
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def create_tables(engine: Engine) -> None:
    """Create the tables (and their indexes) that do not exist yet (call under
    `writer_lock`). This is the migration of a registry written before a table existed:
    `rollouts` and `rollout_events` are added to older databases the first time they open."""
    metadata.create_all(engine, checkfirst=True)


@contextmanager
def writer_lock(engine: Engine, lock_file: Path) -> Iterator[None]:
    """Exclusive access for one change, across processes and machines.

    PostgreSQL: a session advisory lock, released by the server if the holder dies.
    SQLite: an exclusive `flock` on `lock_file` (the database is on this machine).
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(select(func.pg_advisory_lock(_WRITER_LOCK_KEY)))
            try:
                yield
            finally:
                conn.execute(select(func.pg_advisory_unlock(_WRITER_LOCK_KEY)))
        return
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we send BEGIN ourselves (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Transactions get a snapshot; write ones take the write lock at once, so they never fail
    to upgrade."""
    write = conn.get_execution_options().get("hotswap_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
