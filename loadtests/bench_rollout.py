"""Safe rollouts, measured against a real `hotswap serve` on loopback (docs/rollout.md).

1. Requests until the decision, for a good v2 (v1's weights) and a bad one (v1's LoRA B
   matrices x40: its labels depart), each under a 25 % canary with the same gates: client
   requests sent, each version's answers at the decision, the decision and its figures.
2. Client latency (p50/p95) during a canary, during a shadow rollout, and with no rollout:
   the same closed loop of clients for the same time, one after the other in one run. The
   rollouts get a minimum no run reaches, so they stay active. Failed requests are counted.

    .venv/bin/python loadtests/bench_rollout.py                  # a few minutes on CPU
    .venv/bin/python loadtests/bench_rollout.py --min-requests 100 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from itertools import count
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.adapters import make_random_lora, pack_adapter, scaled_lora  # noqa: E402
from tests.support.server import start_server  # noqa: E402

LABELS = ["greeting", "complaint", "question", "praise"]
INPUTS = [
    "hello there, good morning",
    "my card was charged twice and nobody answers",
    "where is the nearest branch?",
    "thanks, your support was wonderful",
]
NEVER = 1_000_000  # a minimum no run reaches: the rollout stays active


def manifest(name: str, build: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"intent": {"enum": LABELS}},
        "required": ["intent"],
        "additionalProperties": False,
    }
    return {
        "name": name,
        "description": f"intent classifier, {build}",
        "task": {
            "system_message": "Classify the message.",
            "input_template": "Message: {input}",
            "output_schema": schema,
            "labels": LABELS,
            "label_field": "intent",
        },
    }


def publish(http: httpx.Client, folder: Path, name: str, build: str, tmp: Path) -> int:
    archive = pack_adapter(folder, tmp / f"{name}-{build}.tar.gz", manifest(name, build))
    with archive.open("rb") as fh:
        response = http.post("/v1/adapters", files={"file": (archive.name, fh)})
    response.raise_for_status()
    return int(response.json()["version"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def closed_loop(
    url: str, name: str, clients: int, stop: asyncio.Event
) -> tuple[list[float], int]:
    """(latencies, failed requests) of `clients` callers of `name` until `stop` is set."""
    latencies: list[float] = []
    failures = 0
    ids = count()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while not stop.is_set():
            i = next(ids)
            started = time.perf_counter()
            response = await http.post(
                "/v1/generate",
                json={"adapter": name, "input": INPUTS[i % len(INPUTS)]},
                headers={"x-request-id": f"{name}-{i}"},
            )
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, failures


async def until_decided(url: str, name: str, clients: int) -> tuple[int, int, dict[str, Any]]:
    """Run clients until `name`'s rollout ends: (requests answered, failed, the rollout)."""
    stop = asyncio.Event()

    async def watch() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while True:
                latest = (await http.get(f"/v1/adapters/{name}/rollouts")).json()[-1]
                if latest["state"] != "active":
                    stop.set()
                    return dict(latest)
                await asyncio.sleep(0.25)

    (latencies, failures), rollout = await asyncio.gather(
        closed_loop(url, name, clients, stop), watch()
    )
    return len(latencies), failures, rollout


async def timed(url: str, name: str, clients: int, seconds: float) -> tuple[list[float], int]:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await closed_loop(url, name, clients, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-requests", type=int, default=50, help="The gates' minimum.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Each latency run.")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    settings = Settings()
    base = prepare_default_base_model(settings.home)
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp_dir:
        tmp = Path(tmp_dir)
        v1 = make_random_lora(
            base, tmp / "v1", seed=21, rank=8, target_modules=["q_proj", "v_proj"]
        )
        builds = {"same": v1, "wild": scaled_lora(v1, tmp / "wild", 40.0)}
        server = start_server(
            tmp / "server.log", home=tmp / "home", base_model=base, args=["--dtype", "float32"]
        )
        try:
            run(server.url, builds, v1, tmp, args)
        finally:
            server.stop()


def run(url: str, builds: dict[str, Path], v1: Path, tmp: Path, args: argparse.Namespace) -> None:
    gates = {"min_requests": args.min_requests, "max_p95_latency_ratio": 5.0}
    http = httpx.Client(base_url=url, timeout=300)
    print(f"1. requests until the decision (25 % canary, {gates}, {args.clients} clients)")
    for build in ("same", "wild"):
        name = f"decide-{build}"
        publish(http, v1, name, "v1", tmp)
        publish(http, builds[build], name, build, tmp)
        canary = {"version": 2, "percent": 25, "gates": gates}
        http.post(f"/v1/adapters/{name}/rollouts", json=canary).raise_for_status()
        started = time.perf_counter()
        answered, failed, rollout = asyncio.run(until_decided(url, name, args.clients))
        figures = rollout["events"][-1]["figures"]
        print(
            f"   v2={build:5s} {rollout['state']:12s} after {answered} client requests "
            f"({time.perf_counter() - started:.1f} s, {failed} failed): candidate "
            f"{figures['candidate_requests']}, current {figures['current_requests']}, "
            f"label JS {figures['label_js_distance']:.3f} (chance {figures['label_js_chance']:.3f})"
        )

    print(f"2. client latency, {args.clients} clients, {args.seconds:.0f} s each")
    for mode in ("none", "canary", "shadow"):
        name = f"latency-{mode}"
        publish(http, v1, name, "v1", tmp)
        publish(http, v1, name, "same", tmp)
        if mode != "none":
            body: dict[str, Any] = {"version": 2, "mode": mode, "gates": {"min_requests": NEVER}}
            if mode == "canary":
                body["percent"] = 25
            http.post(f"/v1/adapters/{name}/rollouts", json=body).raise_for_status()
        latencies, failed = asyncio.run(timed(url, name, args.clients, args.seconds))
        live = None
        if mode != "none":
            live = http.get(f"/v1/adapters/{name}/rollouts").json()[-1]["live"]
        extra = (
            f", shadow copies run {live['candidate_requests']}, dropped {live['shadow_dropped']}"
            if mode == "shadow" and live
            else ""
        )
        print(
            f"   {mode:6s} p50 {percentile(latencies, 50) * 1000:6.0f} ms  "
            f"p95 {percentile(latencies, 95) * 1000:6.0f} ms  "
            f"mean {statistics.fmean(latencies) * 1000:6.0f} ms  "
            f"(n={len(latencies)}, {failed} failed{extra})"
        )


if __name__ == "__main__":
    main()
