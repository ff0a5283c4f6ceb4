"""A small HTTP client for the adapter routes, used by `hotswap adapters ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class AdminError(Exception):
    """The server refused a call; the message is the server's own."""


class AdminClient:
    def __init__(self, url: str, api_key: str | None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AdminError(f"Cannot reach {self._http.base_url}: {exc}") from exc
        if response.is_error:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise AdminError(f"{response.status_code}: {message}")
        return response.json() if response.content else None

    def push(self, archive: Path, name: str | None, description: str | None) -> Any:
        form = {k: v for k, v in {"name": name, "description": description}.items() if v}
        with archive.open("rb") as fh:
            return self._call("POST", "/v1/adapters", files={"file": (archive.name, fh)}, data=form)

    def list(self) -> Any:
        return self._call("GET", "/v1/adapters")

    def show(self, name: str) -> Any:
        return self._call("GET", f"/v1/adapters/{name}")

    def rollouts(self, name: str) -> Any:
        return self._call("GET", f"/v1/adapters/{name}/rollouts")

    def start_rollout(self, name: str, plan: dict[str, Any]) -> Any:
        return self._call("POST", f"/v1/adapters/{name}/rollouts", json=plan)

    def abort_rollout(self, name: str) -> Any:
        return self._call("POST", f"/v1/adapters/{name}/rollouts/abort")

    def promote(self, name: str, version: int) -> Any:
        return self._call("POST", f"/v1/adapters/{name}/promote", json={"version": version})

    def rollback(self, name: str) -> Any:
        return self._call("POST", f"/v1/adapters/{name}/rollback")

    def delete(self, name: str, version: int) -> None:
        self._call("DELETE", f"/v1/adapters/{name}/versions/{version}")
