"""The Locust file runs headless against the real server: closed-loop HTTP and gRPC users and
the open-loop user together, every request succeeds, both protocols are exercised."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.run_locust import CLOSED_LOOP, OPEN_LOOP, run_locust
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine


def test_locust_headless_http_and_grpc_without_failures(
    server: RunningServer, tmp_path: Path
) -> None:
    code, rows = run_locust(
        url=server.url,
        grpc_target=server.grpc_target,
        user_classes=CLOSED_LOOP + OPEN_LOOP,
        seconds=20,
        users=3,
        out=tmp_path / "locust",
        # the session's own adapters only: other tests register adapters whose manifest
        # schemas need more than 24 tokens, which "free" requests to them rightly get 422 for
        options=[
            "--arrival-rate",
            "0.5",
            "--max-tokens",
            "24",
            "--adapters",
            "base:1,alpha:2,beta:2",
        ],
    )
    total = next(row for row in rows if row.name == "Aggregated")
    per_type: dict[str, int] = {}
    for row in rows:
        if row.name != "Aggregated":
            per_type[row.type] = per_type.get(row.type, 0) + row.requests
    assert code == 0, rows
    assert total.failures == 0, rows
    assert per_type.get("POST", 0) > 0 and per_type.get("grpc", 0) > 0, rows
    assert (tmp_path / "locust.html").stat().st_size > 0
