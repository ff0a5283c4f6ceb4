"""A real server on a PostgreSQL registry and a shared adapter folder: what another process
(another replica) uploads and promotes is what the server's very next request runs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from adapters.base_spec import spec_from_hf_config
from adapters.fingerprint import model_fingerprint
from adapters.registry import AdapterRegistry
from tests.support.adapters import pack_adapter
from tests.support.postgres import running_postgres
from tests.support.server import RunningServer, start_server

pytestmark = [pytest.mark.engine, pytest.mark.postgres]


def served_version(server: RunningServer, adapter: str) -> int:
    response = httpx.post(
        f"{server.url}/v1/generate",
        json={"adapter": adapter, "input": "Hello", "max_tokens": 4},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["adapter"]["name"] == adapter
    return int(body["adapter"]["version"])


def test_a_server_on_postgresql_serves_what_another_process_promotes(
    base_model_path: Path, lora_folders: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "shared-store"
    with running_postgres() as postgres:
        url = postgres.create_database()
        server = start_server(
            tmp_path / "server.log",
            home=tmp_path / "server-home",
            base_model=base_model_path,
            args=["--dtype", "float32", f"--adapter=alpha={lora_folders['alpha']}"],
            env={"HOTSWAP_DATABASE_URL": url, "HOTSWAP_ADAPTER_STORE_DIR": str(store)},
        )
        spec = spec_from_hf_config(
            base_model_path, fingerprint=model_fingerprint(base_model_path), max_lora_rank=16
        )
        other = AdapterRegistry(tmp_path / "other-home", spec, database_url=url, store_dir=store)
        try:
            # the server registered alpha at start, in PostgreSQL and the shared folder
            listing = [(s.name, s.versions, s.promoted_version) for s in other.list_adapters()]
            assert listing == [("alpha", [1], 1)]
            assert not (tmp_path / "server-home" / "adapters").exists()
            assert served_version(server, "alpha") == 1

            archive = pack_adapter(lora_folders["beta"], tmp_path / "v2.tar.gz", {"name": "alpha"})
            assert other.register(archive).adapter.version == 2
            other.promote("alpha", 2)
            assert served_version(server, "alpha") == 2  # the next request, no reload asked
            assert other.rollback("alpha").version == 1
            assert served_version(server, "alpha") == 1
            admin = httpx.get(f"{server.url}/v1/adapters/alpha", timeout=30)
            assert admin.status_code == 200, admin.text
            assert admin.json()["promoted_version"] == 1
        finally:
            other.close()
            server.stop()
