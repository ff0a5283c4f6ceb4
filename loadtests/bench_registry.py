"""What resolving an adapter name costs per request, on each registry backend.

`resolve("name")` reads the promoted version from the database on every call (that is how a
promote made by another replica is seen at once), so its cost is paid by every request.
Measured side by side in one run, rounds interleaved:

- SQLite, the embedded default (SQLAlchemy, pooled connection);
- the same query through raw `sqlite3` on one kept-open connection, as the store did before
  SQLAlchemy (the baseline), and through raw `psycopg` (the PostgreSQL round trip alone);
- PostgreSQL over TCP on loopback (how a replica reaches a shared server) and over its unix
  socket, on a PostgreSQL started for the run (see tests/support/postgres.py).

    .venv/bin/python loadtests/bench_registry.py            # about a minute
    .venv/bin/python loadtests/bench_registry.py --calls 3000 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.base_spec import spec_from_hf_config  # noqa: E402
from adapters.registry import AdapterRegistry  # noqa: E402
from tests.adapters.conftest import BASE_CONFIG, FINGERPRINT, AdapterKit  # noqa: E402
from tests.support.postgres import SUPERUSER, RunningPostgres, running_postgres  # noqa: E402

NAMES = [f"task{i}" for i in range(8)]

# The pre-SQLAlchemy store's `get_promoted` statement.
_RAW_PROMOTED = (
    "SELECT lora_int_id, name, version, digest, manifest, created_at FROM versions "
    "WHERE (name, version) = (SELECT name, promoted FROM names WHERE name = ?)"
)


def fill(registry: AdapterRegistry, kit: AdapterKit) -> None:
    """Two versions of each name, the second promoted."""
    for index, name in enumerate(NAMES):
        for seed in (2 * index, 2 * index + 1):
            registry.register(kit.tar_gz(kit.folder(name=name, seed=seed)))
        registry.promote(name, 2)


def raw_sqlite_resolver(db: Path) -> Callable[[str], object]:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def resolve(name: str) -> object:
        conn.execute("BEGIN")
        row = conn.execute(_RAW_PROMOTED, (name,)).fetchone()
        conn.execute("COMMIT")
        return row

    return resolve


def resolve_pinned(registry: AdapterRegistry, name: str) -> object:
    return registry.resolve(f"{name}@1")


def raw_psycopg_resolver(server: RunningPostgres, database: str) -> Callable[[str], object]:
    """The same statement on one kept-open psycopg connection (autocommit), over TCP."""
    conn = psycopg.connect(
        host="127.0.0.1", port=server.port, user=SUPERUSER, dbname=database, autocommit=True
    )
    query = _RAW_PROMOTED.replace("?", "%s")

    def resolve(name: str) -> object:
        return conn.execute(query, (name,)).fetchone()

    return resolve


def time_per_call(resolve: Callable[[str], object], calls: int) -> tuple[float, float]:
    """(wall, this process's CPU) microseconds per call, cycling over the names. On a busy
    machine the wall time is mostly waiting to be scheduled (ours, and the database's)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        resolve(NAMES[i % len(NAMES)])
    return (
        (time.perf_counter() - wall) / calls * 1e6,
        (time.process_time() - cpu) / calls * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="resolves per round and backend")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, running_postgres() as pg:
        work = Path(tmp)
        (work / "base").mkdir()
        (work / "base" / "config.json").write_text(json.dumps(BASE_CONFIG))
        spec = spec_from_hf_config(work / "base", fingerprint=FINGERPRINT, max_lora_rank=8)
        (work / "kit").mkdir()
        kit = AdapterKit(work / "kit", spec)

        pg_url = pg.create_database()
        database = pg_url.rsplit("/", 1)[1]
        unix_url = f"postgresql://hotswap@/{database}?host={pg.socket_dir}&port={pg.port}"
        registries = {
            "sqlite": AdapterRegistry(work / "sqlite", spec),
            "postgresql-tcp": AdapterRegistry(work / "pg", spec, database_url=pg_url),
            "postgresql-unix": AdapterRegistry(work / "pg", spec, database_url=unix_url),
        }
        fill(registries["sqlite"], kit)
        fill(registries["postgresql-tcp"], kit)
        resolvers: dict[str, Callable[[str], object]] = {
            "sqlite3 raw (before)": raw_sqlite_resolver(
                work / "sqlite" / "adapters" / "registry.db"
            ),
            "psycopg raw, tcp": raw_psycopg_resolver(pg, database),
        }
        for label, registry in registries.items():
            assert registry.resolve(NAMES[0]).version == 2
            resolvers[f"{label} resolve(name)"] = registry.resolve
            resolvers[f"{label} resolve(name@1)"] = partial(resolve_pinned, registry)

        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in resolvers}
        for _ in range(args.rounds):
            for label, resolve in resolvers.items():
                samples[label].append(time_per_call(resolve, args.calls))
        for registry in registries.values():
            registry.close()

    base = statistics.median(wall for wall, _ in samples["sqlite3 raw (before)"])
    print(f"{args.rounds} rounds x {args.calls} calls; medians over rounds, microseconds")
    print(f"{'path':34} {'wall/call':>9} {'(min-max)':>13} {'cpu/call':>9} {'wall vs raw':>12}")
    for label, values in samples.items():
        walls = [wall for wall, _ in values]
        wall, cpu = statistics.median(walls), statistics.median(c for _, c in values)
        spread = f"{min(walls):.0f}-{max(walls):.0f}"
        print(f"{label:34} {wall:9.0f} {spread:>13} {cpu:9.0f} {wall / base:11.1f}x")


if __name__ == "__main__":
    main()
