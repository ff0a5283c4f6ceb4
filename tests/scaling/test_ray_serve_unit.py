"""The Ray Serve pieces that need no cluster: error mapping, the replica header, the
application's deployments (built, not run)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError, RayTaskError

from server.errors import EngineUnavailable, InvalidRequest
from server.ray_serve.app import REPLICA_HEADER, SECRET_SETTINGS, _served_by_middleware, application
from server.ray_serve.remote_engine import _engine_errors, served_by
from server.settings import Settings


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
