"""The registry through the real server: upload, promote, roll back, delete, hot swap."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.adapters import make_random_lora, pack_adapter, upload_adapter
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

INTENT_SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": ["greeting", "complaint", "question"]}},
    "required": ["intent"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def versions(base_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Archives of three different versions of one adapter, the first with a task manifest."""
    root = tmp_path_factory.mktemp("versions")
    archives = []
    for i, seed in enumerate((11, 12, 13), start=1):
        folder = make_random_lora(
            base_model_path, root / f"v{i}", seed=seed, rank=8, target_modules=["q_proj", "v_proj"]
        )
        manifest = {
            "name": "intent",
            "description": f"intent classifier, build {i}",
            "task": {
                "system_message": "Classify the message.",
                "input_template": "Message: {input}",
                "output_schema": INTENT_SCHEMA,
                "labels": ["greeting", "complaint", "question"],
                "label_field": "intent",
                "reference_distribution": {"greeting": 0.5, "complaint": 0.25, "question": 0.25},
            },
        }
        archives.append(pack_adapter(folder, root / f"v{i}.tar.gz", manifest))
    return archives


def upload(server: RunningServer, archive: Path, **form: str) -> httpx.Response:
    return upload_adapter(server.url, archive, form)


def generate(server: RunningServer, adapter: str, text: str = "hello there") -> dict[str, object]:
    response = httpx.post(
        f"{server.url}/v1/generate",
        json={"adapter": adapter, "input": text},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_upload_promote_rollback_delete(server: RunningServer, versions: list[Path]) -> None:
    first = upload(server, versions[0])
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1 and first.json()["created"] is True
    again = upload(server, versions[0])
    assert again.status_code == 200 and again.json()["version"] == 1
    assert again.json()["created"] is False

    # A first version is promoted and served at once, framed and constrained by its task.
    out = generate(server, "intent")
    assert out["adapter"] == {"name": "intent", "version": 1}
    assert out["valid"] is True and isinstance(out["output"], dict)
    assert set(out["output"]) == {"intent"}

    assert upload(server, versions[1]).json()["version"] == 2
    assert generate(server, "intent")["adapter"] == {"name": "intent", "version": 1}
    assert generate(server, "intent@2")["adapter"] == {"name": "intent", "version": 2}

    promoted = httpx.post(f"{server.url}/v1/adapters/intent/promote", json={"version": 2})
    assert promoted.status_code == 200 and promoted.json()["version"] == 2
    assert generate(server, "intent")["adapter"] == {"name": "intent", "version": 2}

    detail = httpx.get(f"{server.url}/v1/adapters/intent").json()
    assert detail["promoted_version"] == 2 and [v["version"] for v in detail["versions"]] == [1, 2]
    assert "path" not in detail["versions"][0]

    refused = httpx.delete(f"{server.url}/v1/adapters/intent/versions/2")
    assert refused.status_code == 409 and "promoted" in refused.text

    back = httpx.post(f"{server.url}/v1/adapters/intent/rollback", timeout=300)
    assert back.status_code == 200 and back.json()["version"] == 1
    assert generate(server, "intent")["adapter"] == {"name": "intent", "version": 1}

    assert httpx.delete(f"{server.url}/v1/adapters/intent/versions/2").status_code == 204
    gone = httpx.get(f"{server.url}/v1/adapters/intent/versions/2")
    assert gone.status_code == 404 and "has no version 2" in gone.text
    listing = httpx.get(f"{server.url}/v1/adapters").json()
    assert {"name": "intent", "promoted_version": 1, "versions": [1]}.items() <= next(
        a for a in listing if a["name"] == "intent"
    ).items()
    assert "intent" in {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}


@pytest.mark.parametrize(
    ("files", "status", "needle"),
    [
        ({"file": ("x.tar.gz", b"not an archive at all", "application/gzip")}, 422, "archive"),
        ({"file": ("x.tar.gz", b"", "application/gzip")}, 422, "empty"),
    ],
)
def test_bad_uploads_are_refused_and_change_nothing(
    server: RunningServer, files: dict[str, tuple[str, bytes, str]], status: int, needle: str
) -> None:
    before = httpx.get(f"{server.url}/v1/adapters").json()
    response = httpx.post(f"{server.url}/v1/adapters", files=files, data={"name": "bad"})
    assert response.status_code == status, response.text
    assert needle in response.text.lower()
    assert httpx.get(f"{server.url}/v1/adapters").json() == before


def test_upload_of_an_adapter_for_another_base_is_refused(
    server: RunningServer, versions: list[Path], tmp_path: Path
) -> None:
    manifest = {"name": "foreign", "base_model": "sha256:" + "0" * 64}
    archive = pack_adapter(versions[0].parent / "v1", tmp_path / "foreign.tar.gz", manifest)
    response = upload(server, archive)
    assert response.status_code == 422 and "trained for base model" in response.text


def test_unknown_adapter_is_a_404_naming_what_exists(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/v1/generate", json={"adapter": "nope", "input": "x"})
    assert response.status_code == 404 and "alpha" in response.text


async def test_swap_under_load_fails_no_request(
    server: RunningServer, versions: list[Path]
) -> None:
    """Clients keep calling `swap` while it is promoted and rolled back 20 times: every
    request succeeds, on a version that was promoted at some moment of its lifetime."""
    for archive in versions[:2]:
        assert upload(server, archive, name="swap").status_code == 201
    swaps: list[tuple[float, float, int]] = []  # (call start, call return, version promoted)
    results: list[tuple[float, float, int]] = []
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = await http.post("/v1/generate", json={"adapter": "swap", "input": "hi"})
            assert response.status_code == 200, response.text
            results.append((sent, time.monotonic(), response.json()["adapter"]["version"]))

    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        clients = [asyncio.create_task(client(http)) for _ in range(4)]
        for i in range(20):
            started = time.monotonic()
            if i % 2 == 0:
                r = await http.post("/v1/adapters/swap/promote", json={"version": 2})
            else:
                r = await http.post("/v1/adapters/swap/rollback")
            assert r.status_code == 200, r.text
            swaps.append((started, time.monotonic(), r.json()["version"]))
        stop.set()
        await asyncio.gather(*clients)

    assert len(results) >= 20
    timeline = [(float("-inf"), float("-inf"), 1), *swaps, (float("inf"), float("inf"), -1)]
    for sent, received, version in results:
        possible = {
            timeline[i][2]
            for i in range(len(timeline) - 1)
            if timeline[i][0] <= received and sent <= timeline[i + 1][1]
        }
        assert version in possible, (sent, received, version, swaps)


UNKNOWN_ADAPTER_REQUESTS = (
    'hotswap_requests_total{adapter="unknown",protocol="http",route="generate",'
    'status="model_not_found",version=""}'
)


def sample(scrape: str, series: str) -> float:
    """The value of one series (name and every label) in a /metrics scrape; 0 if absent."""
    for line in scrape.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_stats_after_traffic(server: RunningServer, versions: list[Path]) -> None:
    """This test's own traffic shows in /metrics and in the stats endpoint: an adapter of its
    own (its second version called pinned before it is promoted, so loaded cold) and one
    request for an unknown adapter, counted against the scrape before it."""
    unknown_before = sample(httpx.get(f"{server.url}/metrics").text, UNKNOWN_ADAPTER_REQUESTS)
    for archive in versions[:2]:
        assert upload(server, archive, name="metered").status_code == 201
    answers = [generate(server, "metered@2")]
    promoted = httpx.post(
        f"{server.url}/v1/adapters/metered/promote", json={"version": 2}, timeout=300
    )
    assert promoted.status_code == 200, promoted.text
    for text in ("hello", "my card is broken", "where is my money?"):
        answers.append(generate(server, "metered", text))
    unknown = httpx.post(f"{server.url}/v1/generate", json={"adapter": "nope", "input": "x"})
    assert unknown.status_code == 404, unknown.text
    scrape = httpx.get(f"{server.url}/metrics").text
    for needle in (
        'hotswap_requests_total{adapter="metered",protocol="http",route="generate",status="ok",',
        'hotswap_schema_outcomes_total{adapter="metered",outcome="valid"}',
        'hotswap_labels_total{adapter="metered",label=',
        'hotswap_drift_window_fill{adapter="metered"}',
        'hotswap_time_to_first_token_seconds_bucket{adapter="metered",le="0.5",protocol="http"}',
        'hotswap_adapter_cold_loads_total{adapter="metered"}',
        'hotswap_adapter_swaps_total{adapter="metered",kind="promote"}',
        'hotswap_adapter_load_seconds_count{adapter="metered"}',
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
    ):
        assert needle in scrape, needle
    assert sample(scrape, UNKNOWN_ADAPTER_REQUESTS) == unknown_before + 1
    assert all(answer["valid"] is True for answer in answers), answers
    stats = httpx.get(f"{server.url}/v1/adapters/metered/stats").json()
    assert stats["valid"] == len(answers) and stats["invalid"] == 0
    assert stats["validity_rate"] == 1.0
    assert sum(stats["labels"].values()) == stats["drift"]["window_count"] == len(answers)
    assert set(stats["labels"]) <= {"greeting", "complaint", "question"}
    assert 0 < stats["drift"]["window_fill"] <= 1
    assert httpx.get(f"{server.url}/v1/adapters/nope/stats").status_code == 404


def test_cli_pushes_promotes_and_lists(server: RunningServer, versions: list[Path]) -> None:
    hotswap = Path(sys.executable).parent / "hotswap"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(hotswap), "adapters", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=300,
        )

    pushed = cli("push", str(versions[2]), "--name", "cli", "--promote")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["version"] == 1
    listing = json.loads(cli("list").stdout)
    assert {"name": "cli", "promoted_version": 1, "versions": [1]}.items() <= next(
        a for a in listing if a["name"] == "cli"
    ).items()
    refused = cli("delete", "cli", "1")
    assert refused.returncode == 1 and "409" in refused.stderr and "promoted" in refused.stderr


def test_an_adapter_whose_task_schema_cannot_be_served_is_refused_at_upload(
    server: RunningServer, versions: list[Path], tmp_path: Path
) -> None:
    """Issue 20's review fix: the task schema goes through the requests' own admission at
    upload (bounding, compile sandbox, fallback engine), so an adapter whose every task call
    would be a 422 is never stored or promoted."""
    before = httpx.get(f"{server.url}/v1/adapters").json()
    lookahead = {"type": "string", "pattern": "^(?=.*[0-9])[a-z0-9]{8}$"}  # no engine can
    manifest = {"name": "unservable", "task": {"output_schema": lookahead}}
    archive = pack_adapter(versions[0].parent / "v1", tmp_path / "unservable.tar.gz", manifest)
    response = upload(server, archive)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "task.output_schema" in message and "refused (" in message, message
    assert httpx.get(f"{server.url}/v1/adapters").json() == before
