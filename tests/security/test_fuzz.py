"""Fuzzing through the real server with keys: schemathesis over every route of its own
OpenAPI schema (valid and invalid requests, bounded in time), and hypothesis-made malformed
archives through the upload route. No answer is a 5xx; the registry is unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.security.conftest import Witness
from tests.security.fuzz import fuzz_openapi, malformed_archives
from tests.security.payloads import ADMIN_KEY, Target, adapter_files

pytestmark = pytest.mark.engine

FUZZ_BUDGET_S = 80.0
EXAMPLES_PER_OPERATION = 12
MIN_CALLS = 150  # of the 14 operations' 2 modes x 12 examples, within the budget
ARCHIVE_EXAMPLES = 50
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def test_no_route_answers_a_5xx(witness: Witness) -> None:
    raw = witness.http.get("/openapi.json", headers=ADMIN)
    assert raw.status_code == 200, raw.text
    report = fuzz_openapi(
        raw.json(), witness.server.url, ADMIN, FUZZ_BUDGET_S, EXAMPLES_PER_OPERATION
    )
    assert not report.server_errors, "\n".join(report.server_errors)
    fuzzed_paths = {label.split(" ", 2)[2] for label in report.calls}
    assert {"/v1/generate", "/v1/chat/completions", "/v1/adapters"} <= fuzzed_paths, report.calls
    assert sum(report.calls.values()) >= MIN_CALLS, report.calls
    print(f"schemathesis: {sum(report.calls.values())} calls, {report.calls}")


def test_malformed_archives_never_5xx(witness: Witness, target: Target) -> None:
    """Any answer but a 5xx; an archive that still unpacks to a valid adapter (a byte of its
    weights changed) is stored as a new version of `alpha`, then deleted."""
    statuses: dict[int, int] = {}

    @settings(
        max_examples=ARCHIVE_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(upload=malformed_archives(adapter_files(target.adapter_dir)))
    def run(upload: tuple[str, bytes]) -> None:
        filename, data = upload
        response = witness.http.post(
            "/v1/adapters",
            files={"file": (filename, data, "application/octet-stream")},
            data={"name": "alpha"},
            headers=ADMIN,
        )
        witness.answers.append(response.text)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in {200, 201, 400, 413, 422}, response.text
        if response.status_code == 201:
            _delete_version(witness, response.json())

    run()
    assert sum(statuses.values()) == ARCHIVE_EXAMPLES and statuses.get(422), statuses
    print(f"malformed archives: {statuses}")


def _delete_version(witness: Witness, version: dict[str, Any]) -> None:
    path = f"/v1/adapters/{version['name']}/versions/{version['version']}"
    assert witness.http.delete(path, headers=ADMIN).status_code == 204
