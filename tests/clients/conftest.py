"""Fixtures of the client suite: the name of the session server's base model, and the two
token limits every case runs with (the OpenAI client is `tests/conftest.py`'s)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.server import RunningServer

# What client libraries commonly send, and nothing: every case runs with each.
TOKEN_LIMITS = (64, None)


@pytest.fixture(scope="module")
def base_model(server: RunningServer) -> str:
    return str(httpx.get(f"{server.url}/readyz", timeout=30).json()["base_model"])


@pytest.fixture(
    params=TOKEN_LIMITS, ids=lambda limit: f"max_tokens={'unset' if limit is None else limit}"
)
def max_tokens(request: pytest.FixtureRequest) -> int | None:
    return request.param
