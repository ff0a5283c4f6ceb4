"""A real PostgreSQL on a free loopback port, in a temporary folder, started by the tests.

`initdb` and `pg_ctl` are found on PATH or in Debian's `/usr/lib/postgresql/<version>/bin`
(`make postgres` installs the `postgresql` package where they are missing). The package's
own cluster and service are never used: each session runs `initdb` in a fresh folder, serves
on 127.0.0.1 and a unix socket in that folder, and stops and removes it afterwards.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user the
package creates. Durability is off (fsync): the data is thrown away after the run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import psycopg
import pytest

from tests.support.server import free_port

INSTALL_HINT = "install PostgreSQL: `make postgres` (Debian/Ubuntu: apt-get install postgresql)"
SUPERUSER = "hotswap"


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL server program (`initdb`, `pg_ctl`); FileNotFoundError if absent."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise FileNotFoundError(f"{name} is not on PATH nor in /usr/lib/postgresql: {INSTALL_HINT}")
    return found


@dataclass
class RunningPostgres:
    """A server of our own; `create_database` gives each test an empty database."""

    root: Path
    port: int
    run_as: str | None
    _names: Iterator[int] = field(default_factory=count)

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for `database` over TCP on loopback, as a remote replica uses."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name of our own making
        return self.url(name)

    def stop(self) -> None:
        _run_as(
            self.run_as,
            [pg_tool("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            self.root,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_postgres() -> Iterator[RunningPostgres]:
    """Start PostgreSQL in a new temporary folder; stop it and remove the folder afterwards."""
    run_as = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's tmp folder: it is private to root, and the server may run as postgres.
    root = Path(tempfile.mkdtemp(prefix="hotswap-pg-"))
    (root / "socket").mkdir()
    if run_as is not None:
        try:
            owner = pwd.getpwnam(run_as)
        except KeyError:
            raise RuntimeError(
                f"PostgreSQL will not run as root and there is no {run_as!r} user: {INSTALL_HINT}"
            ) from None
        for path in (root, root / "socket"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = RunningPostgres(root=root, port=free_port(), run_as=run_as)
    try:
        _run_as(
            run_as,
            [
                pg_tool("initdb"),
                "-D",
                str(root / "data"),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            root,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        _run_as(
            run_as,
            [
                pg_tool("pg_ctl"),
                "-D",
                str(root / "data"),
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            root,
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[RunningPostgres]:
    """One PostgreSQL for the session, started on first use."""
    with running_postgres() as server:
        yield server


def _run_as(user: str | None, args: list[str], cwd: Path) -> None:
    done = subprocess.run(
        args, cwd=cwd, user=user, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        log = cwd / "server.log"
        detail = log.read_text() if log.exists() else ""
        raise RuntimeError(
            f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr or done.stdout}"
            f"{detail[-2000:]}"
        )
