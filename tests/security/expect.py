"""What every refusal must look like: the status allowed, the OpenAI error envelope, and a
message that names the field or the limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


def assert_refused(response: httpx.Response, expect: Mapping[int, tuple[str, ...]]) -> None:
    """The status is one of `expect`'s; a 4xx carries the envelope naming its words."""
    assert response.status_code in expect, (response.status_code, response.text[:2000])
    if response.status_code >= 400:
        assert_envelope(response.status_code, response.json(), expect[response.status_code])


def assert_envelope(status: int, body: Any, needles: tuple[str, ...]) -> None:
    """`{"error": {"message", "type", "code"}}` with `code == status` and every needle in the
    message (case-insensitive)."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert error["code"] == status, error
    assert isinstance(error["type"], str) and error["type"], error
    message = str(error["message"])
    missing = [needle for needle in needles if needle.lower() not in message.lower()]
    assert not missing, f"message {message!r} does not name {missing}"
