"""API keys and roles, checked at the HTTP layer (no engine needed: an authorised request
gets as far as the engine-starting 503)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.auth import AuthError, KeyRing, Role, check_bind_address
from server.http.app import create_app
from server.settings import Settings

KEYS = KeyRing({"a-secret": Role.ADMIN, "i-secret": Role.INFER})


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(Settings(), KEYS))  # no `with`: the engine is not started


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("get", "/v1/models", {}, 401),
        ("get", "/v1/models", {"Authorization": "Bearer wrong"}, 401),
        ("get", "/v1/models", {"Authorization": "Basic i-secret"}, 401),
        ("get", "/v1/models", {"Authorization": "Bearer i-secret"}, 503),
        ("get", "/v1/models", {"Authorization": "Bearer a-secret"}, 503),
        ("get", "/v1/adapters", {"Authorization": "Bearer i-secret"}, 403),
        ("get", "/v1/adapters", {"Authorization": "Bearer a-secret"}, 503),
        ("post", "/v1/adapters/x/rollback", {}, 401),
        ("get", "/healthz", {}, 200),
        ("get", "/readyz", {}, 503),
    ],
)
def test_roles(
    client: TestClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = client.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert "secret" not in response.text


def test_no_keys_means_open_access() -> None:
    KeyRing({}).check(None, Role.ADMIN)


def test_infer_key_cannot_administer() -> None:
    with pytest.raises(AuthError, match="'infer' role") as caught:
        KEYS.check("Bearer i-secret", Role.ADMIN)
    assert caught.value.status == 403


def test_keys_file_is_merged_and_validated(tmp_path: Path) -> None:
    good = tmp_path / "keys.json"
    good.write_text(json.dumps({"f-secret": "admin"}))
    KeyRing.load({}, good).check("Bearer f-secret", Role.ADMIN)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"f-secret": "root"}))
    with pytest.raises(ValueError, match="'infer' \\| 'admin'"):
        KeyRing.load({}, bad)


def test_binding_beyond_loopback_needs_keys() -> None:
    assert check_bind_address("127.0.0.1", KeyRing({})) is None
    assert check_bind_address("0.0.0.0", KEYS) is None
    refusal = check_bind_address("0.0.0.0", KeyRing({}))
    assert refusal is not None and "without API keys" in refusal
