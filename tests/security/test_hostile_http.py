"""Every hostile request of the shared table (`payloads.HTTP_CASES`) over HTTP, with the keys
it would need: refused with the allowed 4xx naming the field or limit (or, for a schema the
answer can honour, answered with a valid document), in time, while `/healthz` stays fast."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import Witness
from tests.security.expect import assert_refused
from tests.security.payloads import HTTP_CASES, HostileCase, Target

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("case", HTTP_CASES, ids=[case.id for case in HTTP_CASES])
def test_hostile_request_is_refused(case: HostileCase, target: Target, witness: Witness) -> None:
    sent = case.build(target)
    started = time.monotonic()
    response = witness.send(sent)
    took = time.monotonic() - started
    assert_refused(response, case.expect)
    if response.status_code == 200:  # a schema the answer honours (see `payloads.ANSWERED`)
        assert response.json()["valid"] is True, response.text
    assert took < case.within_s, f"answered after {took:.1f} s"
