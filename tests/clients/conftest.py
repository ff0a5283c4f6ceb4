"""Fixtures of the client suite: the session server, the name of its base model, and the two
token limits every case runs with."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from tests.support.server import RunningServer

# What client libraries commonly send, and nothing: every case runs with each.
TOKEN_LIMITS = (64, None)


@pytest.fixture(scope="module")
def base_model(server: RunningServer) -> str:
    return str(httpx.get(f"{server.url}/readyz", timeout=30).json()["base_model"])


@pytest.fixture(scope="module")
def openai_client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(
    params=TOKEN_LIMITS, ids=lambda limit: f"max_tokens={'unset' if limit is None else limit}"
)
def max_tokens(request: pytest.FixtureRequest) -> int | None:
    return request.param
