"""API keys and roles: `infer` may call the models, `admin` may also change adapters."""

from __future__ import annotations

import hashlib
import hmac
import json
from enum import StrEnum
from pathlib import Path

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Role(StrEnum):
    INFER = "infer"
    ADMIN = "admin"


class AuthError(Exception):
    """A request without the right key; `status` is 401 (no or unknown key) or 403 (role)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class KeyRing:
    """The configured keys, held as sha256 digests so the keys themselves stay out of memory
    dumps and logs. Empty: authentication is off (the server then binds to loopback only)."""

    def __init__(self, keys: dict[str, Role]) -> None:
        self._roles = {_digest(key): Role(role) for key, role in keys.items()}

    @classmethod
    def load(cls, keys: dict[str, Role], keys_file: Path | None) -> KeyRing:
        """Keys from settings plus an optional JSON file `{"<key>": "admin" | "infer"}`."""
        from_file: dict[str, Role] = {}
        if keys_file is not None:
            try:
                raw = json.loads(keys_file.read_text())
                from_file = {str(k): Role(v) for k, v in raw.items()}
            except (OSError, ValueError, AttributeError) as exc:
                raise ValueError(
                    f"API keys file {keys_file} must be a JSON object of key -> "
                    f"'infer' | 'admin': {exc}"
                ) from exc
        return cls({**keys, **from_file})

    @property
    def enabled(self) -> bool:
        return bool(self._roles)

    def check(self, authorization: str | None, needed: Role) -> None:
        """Raise AuthError unless `authorization` ("Bearer <key>") carries `needed`."""
        if not self.enabled:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError(401, "Missing API key: send 'Authorization: Bearer <key>'.")
        digest = _digest(key.strip())
        role = next((r for d, r in self._roles.items() if hmac.compare_digest(d, digest)), None)
        if role is None:
            raise AuthError(401, "Unknown API key.")
        if needed is Role.ADMIN and role is not Role.ADMIN:
            raise AuthError(403, "This API key has the 'infer' role; this call needs 'admin'.")


def check_bind_address(host: str, keys: KeyRing) -> str | None:
    """Refusal message when serving beyond loopback without keys; None when allowed."""
    if keys.enabled or host in LOOPBACK_HOSTS:
        return None
    return (
        f"Refusing to listen on {host} without API keys: anyone who can reach it could upload "
        "and promote adapters. Set HOTSWAP_API_KEYS or HOTSWAP_API_KEYS_FILE, or bind to "
        "127.0.0.1."
    )


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
