"""The server's adapter service over a real registry and a stand-in engine: a first version is
promoted only once loaded, registry calls leave the event loop, and versions from outside are
range-checked at the HTTP edge."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from adapters.errors import AdapterNotFound, AdapterRejected
from adapters.registry import AdapterRegistry
from server.adapter_service import AdapterService
from server.engine import LoraTarget
from server.errors import EngineUnavailable
from server.http.errors import install_error_handlers
from server.http.routes.adapters import router
from server.http.state import get_adapter_service
from tests.adapters.test_adapters_quarantine import _poison

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit


@pytest.fixture
def database_url() -> None:
    """SQLite only: these tests are about the service, not the backend."""
    return None


class StandInEngine:
    """Records what was promoted when each load ran; fails the loads it is told to."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry
        self.loads: list[tuple[str, int | None]] = []
        self.failing: set[str] = set()
        self.down = False
        self.held: set[int] = set()
        self.counted = asyncio.Event()  # set by each count of what the engine holds
        self.count_gate = asyncio.Event()  # a count answers once this is set
        self.count_gate.set()

    async def load_lora(self, lora: LoraTarget) -> None:
        name = lora.name.split("@")[0]
        self.loads.append((lora.name, self.registry.get(name).promoted_version))
        if self.down:
            raise EngineUnavailable("The engine is not ready; retry shortly.")
        if lora.name in self.failing:
            raise RuntimeError("CUDA error: internal detail")
        self.held.add(lora.lora_int_id)

    async def loaded_loras(self) -> set[int]:
        await self.count_gate.wait()
        self.counted.set()
        return set(self.held)


@pytest.fixture
def engine(open_registry: Callable[[], AdapterRegistry]) -> StandInEngine:
    return StandInEngine(open_registry())  # its own view of the store


@pytest.fixture
def service(registry: AdapterRegistry, engine: StandInEngine) -> AdapterService:
    return AdapterService(registry, engine)  # type: ignore[arg-type]


async def test_a_first_version_is_promoted_only_after_it_loaded(
    service: AdapterService, engine: StandInEngine, registry: AdapterRegistry, kit: AdapterKit
) -> None:
    result = await service.upload(kit.tar_gz(kit.folder()))

    assert engine.loads == [("intent@1", None)]  # nothing promoted while it loaded
    assert registry.resolve("intent").version == result.adapter.version == 1
    await service.upload(kit.tar_gz(kit.folder(seed=1)))
    assert engine.loads == [("intent@1", None)]  # later versions wait for a promote
    assert registry.get("intent").promoted_version == 1


async def test_a_promote_does_not_wait_for_the_loaded_adapters_gauge(
    service: AdapterService, engine: StandInEngine, kit: AdapterKit
) -> None:
    """Counting what the engine holds is a round trip to its core: the gauge is recounted in
    the background, and the promote returns first."""

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("hotswap_adapters_loaded")

    await service.upload(kit.tar_gz(kit.folder()))
    await asyncio.wait_for(engine.counted.wait(), 5)
    assert gauge() == 1
    await service.upload(kit.tar_gz(kit.folder(seed=1)))
    engine.count_gate.clear()  # the engine's core does not answer the count yet
    engine.counted.clear()
    promoted = await asyncio.wait_for(service.promote("intent", 2), 5)
    assert promoted.version == 2 and not engine.counted.is_set()
    engine.count_gate.set()
    await asyncio.wait_for(engine.counted.wait(), 5)
    await asyncio.sleep(0)
    assert gauge() == 2


async def test_a_first_version_the_engine_cannot_load_stays_unpromoted(
    service: AdapterService, engine: StandInEngine, registry: AdapterRegistry, kit: AdapterKit
) -> None:
    engine.failing.add("intent@1")
    archive = kit.tar_gz(kit.folder())
    with pytest.raises(AdapterRejected, match=r"could not load intent@1 .*stored, not") as err:
        await service.upload(archive)
    assert "CUDA" not in str(err.value)
    detail = registry.get("intent")
    assert detail.promoted_version is None and [v.version for v in detail.versions] == [1]
    with pytest.raises(AdapterNotFound):
        registry.resolve("intent")

    engine.failing.clear()  # the same upload again: loaded, then promoted
    assert not (await service.upload(archive)).created
    assert registry.resolve("intent").version == 1


async def test_an_engine_that_is_down_is_a_503_and_nothing_is_promoted(
    service: AdapterService, engine: StandInEngine, registry: AdapterRegistry, kit: AdapterKit
) -> None:
    engine.down = True
    with pytest.raises(EngineUnavailable):
        await service.upload(kit.tar_gz(kit.folder()))
    assert registry.get("intent").promoted_version is None


async def test_warming_skips_what_cannot_be_loaded_or_read(
    service: AdapterService,
    engine: StandInEngine,
    registry: AdapterRegistry,
    kit: AdapterKit,
    home: Path,
    database_url: str | None,
) -> None:
    for name, seed in (("broken", 0), ("intent", 1), ("poisoned", 2)):
        registry.register(kit.tar_gz(kit.folder(name=name, seed=seed)))
    poisoned = '{"name": "poisoned", "lora": {"alpha": null}}'
    _poison(home, database_url, "poisoned", poisoned, promote=True)
    engine.failing.add("broken@1")

    await service.warm_promoted(limit=8)

    assert [name for name, _ in engine.loads] == ["broken@1", "intent@1"]


async def test_registry_calls_run_off_the_event_loop(
    service: AdapterService,
    registry: AdapterRegistry,
    kit: AdapterKit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register(kit.tar_gz(kit.folder()))
    loop_thread = threading.get_ident()
    threads: list[int] = []
    for method in ("list_adapters", "get", "get_version", "resolve", "promote", "delete"):
        real = getattr(registry, method)

        def spy(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            threads.append(threading.get_ident())
            return _real(*args, **kwargs)

        monkeypatch.setattr(registry, method, spy)

    await service.list_adapters()
    await service.get("intent")
    await service.get_version("intent", 1)
    await service.promote("intent", 1)
    await service.upload(kit.tar_gz(kit.folder(seed=3)))
    await service.delete("intent", 2)
    await asyncio.sleep(0)
    assert threads and loop_thread not in threads


@pytest.fixture
def client(service: AdapterService) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.dependency_overrides[get_adapter_service] = lambda: service
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    "version",
    ["0", "-1", "2147483648", "9" * 20, "9" * 5001],
    ids=["0", "-1", "2^31", "20-digits", "5001-digits"],
)
def test_http_versions_out_of_range_are_4xx(
    client: TestClient, registry: AdapterRegistry, kit: AdapterKit, version: int
) -> None:
    registry.register(kit.tar_gz(kit.folder()))
    for method in ("GET", "DELETE"):
        answer = client.request(method, f"/v1/adapters/intent/versions/{version}")
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["message"]
    promote = client.post(
        "/v1/adapters/intent/promote",
        content=f'{{"version": {version}}}',
        headers={"content-type": "application/json"},
    )
    assert promote.status_code in (400, 422), promote.text  # 400: JSON's own digit limit
    assert client.get("/v1/adapters/intent/versions/2147483647").status_code == 404
    assert client.get("/v1/adapters/intent/versions/1").status_code == 200
