"""Safe rollouts through the real server: a good v2 under a 25 % canary promoted by its gates,
a bad v2 (large random weights, whose labels depart from v1's) rolled back at the minimum, a
shadow rollout that clients never see, and a promote or abort by hand obeyed mid-rollout. No
client request fails in any of them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.rollouts.routing import takes_candidate
from server.rollouts.stats import label_distance
from tests.support.adapters import make_random_lora, pack_adapter, scaled_lora, upload_adapter
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

LABELS = ["greeting", "complaint", "question", "praise"]
SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": LABELS}},
    "required": ["intent"],
    "additionalProperties": False,
}
INPUTS = [
    "hello there, good morning",
    "my card was charged twice and nobody answers",
    "where is the nearest branch?",
    "thanks, your support was wonderful",
]
MINIMUM = 20
TEST_GATES = {"min_requests": MINIMUM, "max_p95_latency_ratio": 5.0}
"""Small minimums keep the tests short; the latency ratio is loose on 2 shared CPU cores."""


def manifest(name: str, build: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"intent classifier, {build}",
        "task": {
            "system_message": "Classify the message.",
            "input_template": "Message: {input}",
            "output_schema": SCHEMA,
            "labels": LABELS,
            "label_field": "intent",
        },
    }


@pytest.fixture(scope="module")
def builds(base_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEFT folders: `v1`, `same` (v1's weights: a good v2) and `wild` (v1 with B x 40)."""
    root = tmp_path_factory.mktemp("rollout-builds")
    v1 = make_random_lora(
        base_model_path, root / "v1", seed=21, rank=8, target_modules=["q_proj", "v_proj"]
    )
    return {"v1": v1, "same": v1, "wild": scaled_lora(v1, root / "wild", 40.0)}


def publish(server: RunningServer, folder: Path, name: str, build: str, tmp: Path) -> int:
    archive = pack_adapter(folder, tmp / f"{name}-{build}.tar.gz", manifest(name, build))
    response = upload_adapter(server.url, archive)
    assert response.status_code == 201, response.text
    return int(response.json()["version"])


def two_versions(
    server: RunningServer, builds: dict[str, Path], name: str, v2: str, tmp: Path
) -> None:
    assert publish(server, builds["v1"], name, "v1", tmp) == 1
    assert publish(server, builds[v2], name, v2, tmp) == 2


def start(server: RunningServer, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/v1/adapters/{name}/rollouts", json=body, timeout=300)
    assert response.status_code == 201, response.text
    return dict(response.json())


def promoted_version(server: RunningServer, name: str) -> int | None:
    response = httpx.get(f"{server.url}/v1/adapters/{name}", timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["promoted_version"]


def rollouts(server: RunningServer, name: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/v1/adapters/{name}/rollouts", timeout=60)
    assert response.status_code == 200, response.text
    return list(response.json())


async def ask(http: httpx.AsyncClient, name: str, key: str, text: str) -> dict[str, Any]:
    """One task call with the request id `key`; it must succeed."""
    response = await http.post(
        "/v1/generate", json={"adapter": name, "input": text}, headers={"x-request-id": key}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def traffic(
    server: RunningServer, name: str, prefix: str, percent: float, clients: int = 3
) -> list[tuple[str, dict[str, Any]]]:
    """Requests from `clients` concurrent clients until the rollout of `name` has ended, in
    the order their answers came. Each version's requests cycle through INPUTS in the same
    order, so both see the same mix of inputs."""
    sent: list[tuple[str, dict[str, Any]]] = []
    per_arm: Counter[bool] = Counter()
    counter = iter(range(10_000))
    done = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            key = f"{prefix}-{next(counter)}"
            arm = takes_candidate(key, percent)
            text = INPUTS[per_arm[arm] % len(INPUTS)]
            per_arm[arm] += 1
            sent.append((key, await ask(http, name, key, text)))

    async def watch(http: httpx.AsyncClient) -> None:
        while (await http.get(f"/v1/adapters/{name}/rollouts")).json()[-1]["state"] == "active":
            assert len(sent) < 1_000, "no decision after 1000 requests"
            await asyncio.sleep(0.5)
        done.set()

    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        await asyncio.gather(watch(http), *(client(http) for _ in range(clients)))
    return sent


def pinned_labels(server: RunningServer, ref: str, repeats: int = 5) -> Counter[str]:
    """The labels `ref` answers for INPUTS, each `repeats` times (greedy: the same each time)."""
    counts: Counter[str] = Counter()
    for text in INPUTS:
        response = httpx.post(
            f"{server.url}/v1/generate", json={"adapter": ref, "input": text}, timeout=300
        )
        assert response.status_code == 200, response.text
        counts[response.json()["output"]["intent"]] += repeats
    return counts


async def test_a_good_v2_under_a_25_percent_canary_is_promoted_at_the_minimum(
    server: RunningServer, builds: dict[str, Path], tmp_path: Path
) -> None:
    two_versions(server, builds, "ro-good", "same", tmp_path)
    start(server, "ro-good", {"version": 2, "percent": 25, "gates": TEST_GATES})
    started = time.monotonic()
    sent = await traffic(server, "ro-good", "good", 25.0)
    elapsed = time.monotonic() - started

    (rollout,) = rollouts(server, "ro-good")
    assert rollout["state"] == "promoted", rollout
    figures = rollout["events"][-1]["figures"]
    assert figures["candidate_requests"] >= MINIMUM and figures["current_requests"] >= MINIMUM
    assert figures["label_js_excess"] <= 0.1 and figures["candidate_error_rate"] == 0
    # each request went where its id says until the decision; v2 serves afterwards
    decided = figures["candidate_requests"] + figures["current_requests"]
    for key, answer in sent[: decided - 3]:  # answered before the decision (3 clients)
        assert answer["adapter"]["version"] == (2 if takes_candidate(key, 25.0) else 1), key
    assert promoted_version(server, "ro-good") == 2
    print(f"good canary: decided after {decided} requests, {len(sent)} sent, {elapsed:.1f} s")


async def test_a_bad_v2_is_rolled_back_at_the_minimum_and_clients_return_to_v1(
    server: RunningServer, builds: dict[str, Path], tmp_path: Path
) -> None:
    two_versions(server, builds, "ro-bad", "wild", tmp_path)
    v1, v2 = pinned_labels(server, "ro-bad@1"), pinned_labels(server, "ro-bad@2")
    distance = label_distance(v2, v1)
    assert distance is not None and distance > 0.2, (v1, v2)  # its labels really depart

    start(server, "ro-bad", {"version": 2, "percent": 50, "gates": TEST_GATES})
    sent = await traffic(server, "ro-bad", "bad", 50.0)

    (rollout,) = rollouts(server, "ro-bad")
    assert rollout["state"] == "rolled_back", rollout
    assert "label JS beyond chance" in rollout["reason"]
    figures = rollout["events"][-1]["figures"]
    # decided at the minimum: the smaller arm had exactly MINIMUM requests
    assert min(figures["candidate_requests"], figures["current_requests"]) == MINIMUM
    assert figures["label_js_excess"] > 0.1
    assert promoted_version(server, "ro-bad") == 1
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        after = [await ask(http, "ro-bad", f"bad-after-{i}", INPUTS[0]) for i in range(8)]
    assert {a["adapter"]["version"] for a in after} == {1}
    print(f"bad canary: rolled back after {len(sent)} requests sent, figures {figures}")


async def test_in_shadow_clients_only_see_v1_while_v2_agreement_is_measured(
    server: RunningServer, builds: dict[str, Path], tmp_path: Path
) -> None:
    two_versions(server, builds, "ro-shadow", "same", tmp_path)
    start(server, "ro-shadow", {"version": 2, "mode": "shadow", "gates": TEST_GATES})
    sent = await traffic(server, "ro-shadow", "shadow", 0.0, clients=2)

    (rollout,) = rollouts(server, "ro-shadow")
    figures = rollout["events"][-1]["figures"]
    assert rollout["state"] == "promoted", rollout
    # every client answer until the promotion came from v1 (2 clients: 2 may have raced it)
    before = [answer["adapter"]["version"] for _, answer in sent[: figures["current_requests"] - 2]]
    assert set(before) == {1}
    assert figures["shadow_agreement"] == 1.0 and figures["candidate_requests"] >= MINIMUM
    scrape = httpx.get(f"{server.url}/metrics", timeout=60).text  # noqa: ASYNC210 (one call)
    assert 'hotswap_rollout_requests_total{adapter="ro-shadow",outcome="valid",' in scrape
    assert 'role="candidate",version="2"}' in scrape
    print(f"shadow: promoted after {len(sent)} client requests, figures {figures}")


async def test_a_promote_or_abort_by_hand_mid_rollout_is_obeyed(
    server: RunningServer, builds: dict[str, Path], tmp_path: Path
) -> None:
    two_versions(server, builds, "ro-hand", "same", tmp_path)
    patient = {"version": 2, "percent": 50, "gates": {"min_requests": 10_000}}
    start(server, "ro-hand", patient)
    keys = [f"hand-{i}" for i in range(12)]
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        during = [(await ask(http, "ro-hand", k, INPUTS[1]))["adapter"]["version"] for k in keys]
        assert during == [2 if takes_candidate(k, 50.0) else 1 for k in keys]
        assert set(during) == {1, 2}

        aborted = await http.post("/v1/adapters/ro-hand/rollouts/abort")
        assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
        after = [(await ask(http, "ro-hand", k, INPUTS[1]))["adapter"]["version"] for k in keys]
        assert set(after) == {1}

        start(server, "ro-hand", patient)
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": "ro-hand", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": keys[0]},
        )
        assert chat.status_code == 200, chat.text
        expected = 2 if takes_candidate(keys[0], 50.0) else 1
        assert chat.headers["x-hotswap-adapter-version"] == f"ro-hand@{expected}"

        promoted = await http.post("/v1/adapters/ro-hand/rollouts/promote")
        assert promoted.status_code == 200 and promoted.json()["state"] == "promoted"
        after = [(await ask(http, "ro-hand", k, INPUTS[1]))["adapter"]["version"] for k in keys]
        assert set(after) == {2}
    states = [r["state"] for r in rollouts(server, "ro-hand")]
    assert states == ["aborted", "promoted"]
