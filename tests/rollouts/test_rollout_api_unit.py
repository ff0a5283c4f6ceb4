"""Rollouts through the HTTP routes, the gRPC servicer and the CLI, on the real adapter
service and registry with a stand-in engine: bodies range-checked and named, the candidate
loaded before it is routed to, conflicts as 409 / FAILED_PRECONDITION, manual ends obeyed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from adapters.registry import AdapterRegistry
from server import admin_client
from server.adapter_service import AdapterService
from server.auth import KeyRing, Role
from server.catalog import ModelCatalog
from server.cli import app as cli_app
from server.generation import GenerationService
from server.grpc_api.gen.hotswap.v1 import adapters_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc
from server.grpc_api.server import start_grpc_server, stop_grpc_server
from server.http.errors import install_error_handlers
from server.http.routes.adapters import router
from server.http.state import get_adapter_service, get_catalog
from server.metrics import instruments as m
from server.metrics.labels import LabelTracker
from server.settings import Settings
from server.state import ServerState
from tests.adapters.test_adapter_service import StandInEngine
from tests.support.grpc_calls import call_status
from tests.support.server import free_port

if TYPE_CHECKING:
    pass

ADMIN = "admin-key-1"


@pytest.fixture
def database_url() -> None:
    """SQLite: these tests are about the API edges, not the backend."""
    return None


class ReadyEngine(StandInEngine):
    ready = True


@pytest.fixture
def engine(intent: AdapterRegistry) -> StandInEngine:
    return ReadyEngine(intent)


@pytest.fixture
def catalog(intent: AdapterRegistry) -> ModelCatalog:
    return ModelCatalog("base", intent)


@pytest.fixture
def service(intent: AdapterRegistry, engine: StandInEngine) -> AdapterService:
    return AdapterService(intent, engine)  # type: ignore[arg-type]


@pytest.fixture
def app(service: AdapterService, catalog: ModelCatalog) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.dependency_overrides[get_adapter_service] = lambda: service
    app.dependency_overrides[get_catalog] = lambda: catalog
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def test_a_canary_starts_after_its_candidate_loaded(
    client: TestClient, engine: StandInEngine
) -> None:
    body = {"version": 2, "mode": "canary", "percent": 25, "gates": {"min_requests": 20}}
    response = client.post("/v1/adapters/intent/rollouts", json=body)
    assert response.status_code == 201, response.text
    started = response.json()
    assert (started["state"], started["candidate"], started["baseline"]) == ("active", 2, 1)
    assert started["gates"]["min_requests"] == 20 and started["gates"]["max_label_js"] == 0.1
    assert engine.loads == [("intent@2", 1)]  # loaded while v1 was still served alone
    assert m.ROLLOUT_STATE.labels("intent", "active")._value.get() == 1

    again = client.post("/v1/adapters/intent/rollouts", json=body)
    assert again.status_code == 409 and "already has an active rollout" in again.text


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"version": 2, "percent": 150}, "percent: Input should be less than 100"),
        ({"version": 2, "percent": -1}, "percent: Input should be greater than 0"),
        ({"version": 2}, "percent: a canary needs"),
        ({"version": 2, "mode": "shadow", "percent": 10}, "percent: a shadow rollout"),
        ({"version": 2, "percent": 5, "gates": {"max_error_rate": 2}}, "gates.max_error_rate"),
        ({"version": 2, "percent": 5, "gates": {"min_requests": 10**9}}, "gates.min_requests"),
        ({"version": 2, "percent": 5, "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"version": "2x", "percent": 5}, "version: Input should be a valid integer"),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field_and_changes_nothing(
    client: TestClient, engine: StandInEngine, body: dict[str, Any], named: str
) -> None:
    response = client.post("/v1/adapters/intent/rollouts", json=body)
    assert response.status_code == 422, response.text
    assert named in response.json()["error"]["message"]
    assert engine.loads == [] and client.get("/v1/adapters/intent/rollouts").json() == []


def test_unknown_names_and_versions_are_404(client: TestClient) -> None:
    body = {"version": 2, "percent": 5}
    assert client.post("/v1/adapters/nope/rollouts", json=body).status_code == 404
    assert client.get("/v1/adapters/nope/rollouts").status_code == 404
    missing = client.post("/v1/adapters/intent/rollouts", json={"version": 9, "percent": 5})
    assert missing.status_code == 404 and "has no version 9" in missing.text


def test_the_listing_shows_live_figures_and_a_manual_abort_and_promote(
    client: TestClient, catalog: ModelCatalog, engine: StandInEngine
) -> None:
    client.post("/v1/adapters/intent/rollouts", json={"version": 2, "mode": "shadow"})
    catalog.resolve("intent", "k1")  # a request: this server now tracks the rollout
    (listed,) = client.get("/v1/adapters/intent/rollouts").json()
    assert listed["mode"] == "shadow" and listed["live"]["candidate_requests"] == 0

    aborted = client.post("/v1/adapters/intent/rollouts/abort")
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    assert aborted.json()["events"][-1]["reason"] == "aborted by hand"
    assert catalog.resolve("intent", "k1").version == 1
    assert client.post("/v1/adapters/intent/rollouts/abort").status_code == 409

    client.post("/v1/adapters/intent/rollouts", json={"version": 2, "percent": 1})
    engine.loads.clear()
    promoted = client.post("/v1/adapters/intent/rollouts/promote")
    assert engine.loads == [("intent@2", 1)]  # loaded again before the name points at it
    assert promoted.status_code == 200 and promoted.json()["state"] == "promoted"
    assert catalog.resolve("intent", "k1").version == 2
    history = client.get("/v1/adapters/intent/rollouts").json()
    assert [r["state"] for r in history] == ["aborted", "promoted"]
    assert all(r["live"] is None for r in history)
    assert m.ROLLOUT_DECISIONS.labels("intent", "promoted", "manual")._value.get() >= 1


def test_the_cli_starts_shows_and_aborts_a_rollout(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def client(base_url: str, headers: dict[str, str], timeout: float) -> TestClient:
        return TestClient(app, base_url=base_url, headers=headers)

    monkeypatch.setattr(admin_client.httpx, "Client", client)
    runner = CliRunner()
    url = ["--url", "http://testserver"]
    started = runner.invoke(
        cli_app,
        ["adapters", "promote", "intent", "2", "--canary", "25", "--gate", "min_requests=20", *url],
    )
    assert started.exit_code == 0, started.output
    assert '"state": "active"' in started.output and '"percent": 25.0' in started.output
    shown = runner.invoke(cli_app, ["adapters", "show", "intent", *url])
    assert shown.exit_code == 0 and '"rollouts": [' in shown.output
    assert '"min_requests": 20' in shown.output
    busy = runner.invoke(cli_app, ["adapters", "promote", "intent", "2", "--shadow", *url])
    assert busy.exit_code == 1 and "409: adapter 'intent' already has an active" in busy.output
    aborted = runner.invoke(cli_app, ["adapters", "abort", "intent", *url])
    assert aborted.exit_code == 0 and '"state": "aborted"' in aborted.output
    refused = runner.invoke(
        cli_app,
        ["adapters", "promote", "intent", "2", "--shadow", "--gate", "max_label_js=3", *url],
    )
    assert refused.exit_code == 1 and "422: gates.max_label_js" in refused.output
    both = runner.invoke(
        cli_app, ["adapters", "promote", "intent", "2", "--shadow", "--canary", "5", *url]
    )
    assert both.exit_code == 2 and "choose --canary PERCENT or --shadow" in both.output
    malformed = runner.invoke(
        cli_app, ["adapters", "promote", "intent", "2", "--canary", "5", "--gate", "x", *url]
    )
    assert malformed.exit_code == 2 and "expected GATE=NUMBER" in malformed.output


@pytest.fixture
async def grpc_target(
    tmp_path: Path, service: AdapterService, catalog: ModelCatalog, engine: StandInEngine
) -> AsyncIterator[str]:
    settings = Settings(home=tmp_path, grpc_port=free_port())
    state = ServerState(
        engine=engine,  # type: ignore[arg-type]
        catalog=catalog,
        generation=GenerationService(engine, catalog, 100, 16, 8, LabelTracker()),  # type: ignore[arg-type]
        adapters=service,
        labels=LabelTracker(),
    )
    server = await start_grpc_server(settings, KeyRing({ADMIN: Role.ADMIN}), lambda: state)
    try:
        yield f"127.0.0.1:{settings.grpc_port}"
    finally:
        await stop_grpc_server(server, 0)


async def test_rollouts_over_grpc(grpc_target: str) -> None:
    auth = (("authorization", f"Bearer {ADMIN}"),)
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = adapters_pb2_grpc.AdaptersStub(channel)
        bad = pb.StartRolloutRequest(name="intent", version=2, mode="canary", percent=100.0)
        code, details = await call_status(stub.StartRollout(bad, metadata=auth))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "percent" in details
        nan = pb.StartRolloutRequest(
            name="intent",
            version=2,
            mode="shadow",
            gates=pb.RolloutGates(max_label_js=float("nan")),
        )
        code, details = await call_status(stub.StartRollout(nan, metadata=auth))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "gates.max_label_js" in details

        good = pb.StartRolloutRequest(
            name="intent", version=2, mode="shadow", gates=pb.RolloutGates(min_requests=20)
        )
        started = await stub.StartRollout(good, metadata=auth)
        assert (started.state, started.mode, started.candidate) == ("active", "shadow", 2)
        assert started.gates["min_requests"] == 20 and started.events[0].kind == "started"
        code, _ = await call_status(stub.StartRollout(good, metadata=auth))
        assert code == grpc.StatusCode.FAILED_PRECONDITION

        listed = await stub.ListRollouts(pb.ListRolloutsRequest(name="intent"), metadata=auth)
        assert [r.id for r in listed.rollouts] == [started.id]
        ended = await stub.AbortRollout(pb.EndRolloutRequest(name="intent"), metadata=auth)
        assert ended.state == "aborted" and ended.HasField("ended_at")
        code, _ = await call_status(
            stub.PromoteRollout(pb.EndRolloutRequest(name="intent"), metadata=auth)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        code, _ = await call_status(
            stub.ListRollouts(pb.ListRolloutsRequest(name="nope"), metadata=auth)
        )
        assert code == grpc.StatusCode.NOT_FOUND


def test_a_plain_promote_or_rollback_during_a_rollout(client: TestClient) -> None:
    client.post("/v1/adapters/intent/rollouts", json={"version": 2, "percent": 10})
    refused = client.post("/v1/adapters/intent/rollback")
    assert refused.status_code == 409 and "promote or abort the rollout first" in refused.text
    before = m.ROLLOUT_DECISIONS.labels("intent", "aborted", "manual")._value.get()
    promoted = client.post("/v1/adapters/intent/promote", json={"version": 1})
    assert promoted.status_code == 200 and promoted.json()["version"] == 1
    (ended,) = client.get("/v1/adapters/intent/rollouts").json()
    assert ended["state"] == "aborted" and ended["reason"] == "intent@1 promoted by hand"
    assert m.ROLLOUT_DECISIONS.labels("intent", "aborted", "manual")._value.get() == before + 1
