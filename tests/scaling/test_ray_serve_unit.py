"""The Ray Serve pieces that need no cluster: error mapping, the replica header, the
application's deployments (built, not run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError, RayTaskError

from server.auth import KeyRing, Role
from server.errors import EngineUnavailable, InvalidRequest
from server.ray_serve.app import (
    REPLICA_HEADER,
    SECRET_SETTINGS,
    _served_by_middleware,
    application,
    bind_refusal,
)
from server.ray_serve.remote_engine import _engine_errors, served_by
from server.ray_serve.replica_metrics import scrape_app, scrape_host, serve_scrapes
from server.settings import Settings

pytestmark = pytest.mark.ray


def test_a_hotswap_error_raised_on_a_replica_comes_back_as_itself() -> None:
    cause = InvalidRequest("schema rejected by the engine")
    with pytest.raises(InvalidRequest) as raised, _engine_errors():
        raise RayTaskError("generate", "traceback", cause)
    assert raised.value is cause


def test_a_dead_replica_reads_as_the_engine_unavailable() -> None:
    with pytest.raises(EngineUnavailable, match="replica"), _engine_errors():
        raise ActorDiedError()


def test_other_replica_errors_pass_through() -> None:
    with pytest.raises(RayTaskError), _engine_errors():
        raise RayTaskError("generate", "traceback", ZeroDivisionError("x"))


def test_the_replica_header_names_who_answered() -> None:
    app = FastAPI()
    app.middleware("http")(_served_by_middleware)

    @app.get("/twice")
    async def twice() -> dict[str, str]:
        answered = served_by.get()
        assert answered is not None
        answered.extend(["r1", "r2", "r1"])
        return {}

    @app.get("/none")
    async def none() -> dict[str, str]:
        return {}

    client = TestClient(app)
    assert client.get("/twice").headers[REPLICA_HEADER] == "r1,r2"
    assert REPLICA_HEADER not in client.get("/none").headers


def test_the_application_keeps_secrets_out_of_deployment_arguments() -> None:
    settings = Settings.model_validate(
        {
            "database_url": "postgresql://u:secret@db/h",
            "api_keys": {"k": "admin"},
            "ray_replicas": 3,
        }
    )
    ingress = application(settings)._bound_deployment
    init_args: tuple[Any, ...] = ingress.init_args  # Ray types it as a 1-tuple
    engine_app, settings_json = init_args
    engine = engine_app._bound_deployment
    assert engine.num_replicas == 3 and ingress.num_replicas == 1
    assert engine.ray_actor_options["num_cpus"] == settings.ray_cpus_per_replica
    for args in (settings_json, engine.init_args[0]):
        assert not SECRET_SETTINGS & set(args) and "secret" not in str(args)


def test_the_ingress_refuses_listening_beyond_loopback_without_keys() -> None:
    open_ring, keys = KeyRing({}), KeyRing({"k": Role.ADMIN})
    assert bind_refusal(open_ring, "127.0.0.1", "127.0.0.1") is None
    assert bind_refusal(keys, "0.0.0.0", "0.0.0.0") is None
    for grpc_host, proxy_host in (("127.0.0.1", "0.0.0.0"), ("0.0.0.0", "127.0.0.1")):
        refusal = bind_refusal(open_ring, grpc_host, proxy_host)
        assert refusal is not None and "0.0.0.0 without API keys" in refusal


def test_the_shipped_serve_config_listens_on_loopback() -> None:
    config = yaml.safe_load(
        (Path(__file__).parents[2] / "deploy/ray/serve_config.yaml").read_text()
    )
    assert config["http_options"]["host"] == "127.0.0.1"


def test_replica_metrics_are_on_loopback_or_behind_keys() -> None:
    keys = KeyRing({"k": Role.INFER})
    assert scrape_host(KeyRing({}), "10.0.0.7") == "127.0.0.1"
    assert scrape_host(keys, "10.0.0.7") == "10.0.0.7"
    server = serve_scrapes(scrape_app(keys, public=False), "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        answer = httpx.get(url, headers={"Authorization": "Bearer k"})
        assert answer.status_code == 200 and "python_info" in answer.text
        public = serve_scrapes(scrape_app(keys, public=True), "127.0.0.1")
        assert httpx.get(f"http://127.0.0.1:{public.server_port}/metrics").status_code == 200
        public.shutdown()
    finally:
        server.shutdown()
