"""Hot-swap costs, measured against a real `hotswap serve` on loopback.

1. Time from upload start to the first token and to the whole answer of the new version
   (upload, promote, a streamed chat completion of it), p50/p95 over several versions of a
   rank-16 adapter (all linear layers): on the idle server, then while `--clients` other
   callers are being served.
2. Request latency while versions are promoted every few seconds vs without swaps, same
   client loop, same run: p50/p95/p99 and the ratio. Failed requests are counted.
3. Cold loads: the server keeps `--max-cpu-loras` adapters in memory; requests cycling over
   more adapters than that pay a load from disk. Warm vs cold first-token latency.

    .venv/bin/python loadtests/bench_swap.py            # a few minutes
    .venv/bin/python loadtests/bench_swap.py --long
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.adapters import make_random_lora, pack_adapter  # noqa: E402
from tests.support.server import start_server  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REQUEST = {"input": "Tell me about the weather.", "max_tokens": 8}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1000:7.0f} ms  p95 {percentile(values, 95) * 1000:7.0f} ms"
        f"  p99 {percentile(values, 99) * 1000:7.0f} ms  (n={len(values)})"
    )


def upload(http: httpx.Client, archive: Path, name: str) -> int:
    with archive.open("rb") as fh:
        response = http.post(
            "/v1/adapters", files={"file": (archive.name, fh)}, data={"name": name}
        )
    response.raise_for_status()
    return int(response.json()["version"])


def first_token_seconds(http: httpx.Client, model: str, version: int) -> tuple[float, float]:
    """(seconds to the first streamed token, to the end) of one chat completion of `model`,
    checked to be answered by `version`."""
    started = time.perf_counter()
    first = None
    body = {
        "model": model,
        "messages": [{"role": "user", "content": REQUEST["input"]}],
        "max_tokens": REQUEST["max_tokens"],
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        assert response.headers["x-hotswap-adapter-version"] == f"{model}@{version}"
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line.removeprefix("data: "))["choices"]
                if choices and choices[0]["delta"].get("content"):
                    first = time.perf_counter() - started
    assert first is not None, f"no content streamed from {model}"
    return first, time.perf_counter() - started


def time_to_first_response(http: httpx.Client, archives: list[Path]) -> dict[str, list[float]]:
    """Upload each archive as a new version of `swapme`, promote it, stream one answer from
    it. Seconds per phase (upload, promote, the answer's first token) and from the upload's
    start to the first token and to the whole answer, per version."""
    phases: dict[str, list[float]] = {
        "upload": [],
        "promote": [],
        "first token": [],
        "to first token": [],
        "to full answer": [],
    }
    for archive in archives:
        started = time.perf_counter()
        version = upload(http, archive, "swapme")
        uploaded = time.perf_counter()
        http.post("/v1/adapters/swapme/promote", json={"version": version}).raise_for_status()
        promoted = time.perf_counter()
        first, whole = first_token_seconds(http, "swapme", version)
        for phase, seconds in (
            ("upload", uploaded - started),
            ("promote", promoted - uploaded),
            ("first token", first),
            ("to first token", promoted - started + first),
            ("to full answer", promoted - started + whole),
        ):
            phases[phase].append(seconds)
    return phases


async def background_clients(url: str, clients: int, stop: asyncio.Event) -> int:
    """`clients` closed-loop callers of the adapter `steady` until `stop`; requests done."""
    done = 0

    async def caller(http: httpx.AsyncClient) -> None:
        nonlocal done
        while not stop.is_set():
            response = await http.post("/v1/generate", json={"adapter": "steady", **REQUEST})
            response.raise_for_status()
            done += 1

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await asyncio.gather(*(caller(http) for _ in range(clients)))
    return done


async def time_to_first_response_under_load(
    url: str, archives: list[Path], clients: int
) -> tuple[dict[str, list[float]], int]:
    """`time_to_first_response` while `clients` other callers are being served."""
    stop = asyncio.Event()
    load = asyncio.create_task(background_clients(url, clients, stop))
    await asyncio.sleep(2.0)
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            phases = await asyncio.to_thread(time_to_first_response, http, archives)
    finally:
        stop.set()
    return phases, await load


async def latency_under(
    url: str, seconds: float, clients: int, swap_every: float | None
) -> tuple[list[float], int, int]:
    """(latencies, failed requests, swaps done) for a closed loop of `clients` callers."""
    latencies: list[float] = []
    failures = 0
    swaps = 0
    deadline = time.monotonic() + seconds

    async def caller(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await http.post("/v1/generate", json={"adapter": "swapme", **REQUEST})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    async def swapper(http: httpx.AsyncClient) -> None:
        nonlocal swaps
        assert swap_every is not None
        while time.monotonic() < deadline - swap_every:
            await asyncio.sleep(swap_every)
            path = "/v1/adapters/swapme/rollback" if swaps % 2 else "/v1/adapters/swapme/promote"
            body = None if swaps % 2 else {"version": 1}
            (await http.post(path, json=body)).raise_for_status()
            swaps += 1

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        tasks = [caller(http) for _ in range(clients)]
        if swap_every is not None:
            tasks.append(swapper(http))
        await asyncio.gather(*tasks)
    return latencies, failures, swaps


def cold_loads(http: httpx.Client, archives: list[Path], rounds: int) -> tuple[list[float], ...]:
    """Cycle over more adapters than the engine keeps: each first call after eviction is
    cold. Returns (cold latencies, warm latencies): a warm one repeats the adapter at once."""
    names = [f"cold{i}" for i in range(len(archives))]
    for archive, name in zip(archives, names, strict=True):
        upload(http, archive, name)
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(rounds):
        for name in names:
            for bucket in (cold, warm):
                started = time.perf_counter()
                http.post("/v1/generate", json={"adapter": name, **REQUEST}).raise_for_status()
                bucket.append(time.perf_counter() - started)
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="more versions and longer loops")
    parser.add_argument(
        "--clients", type=int, default=4, help="callers served while versions are swapped in"
    )
    parser.add_argument(
        "--archive",
        choices=["tar", "tar.gz"],
        default="tar",
        help="upload format (weights hardly compress; .tar.gz costs the server a decompression)",
    )
    args = parser.parse_args()
    versions, seconds, rounds = (12, 120.0, 4) if args.long else (8, 40.0, 2)
    home_models = Settings().home
    base = prepare_default_base_model(home_models)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        archives = [
            pack_adapter(
                make_random_lora(
                    base, tmp / f"a{i}", seed=500 + i, rank=16, target_modules=ALL_LINEAR
                ),
                tmp / f"a{i}.{args.archive}",
            )
            for i in range(2 * versions + 1)
        ]
        (tmp / "home").mkdir()
        server = start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=base,
            args=[],
            env={"HOTSWAP_MAX_CPU_LORAS": "2", "HOTSWAP_MAX_LORAS": "2"},
        )
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                upload(http, archives[-1], "steady")
                idle = time_to_first_response(http, archives[:versions])
                loaded, background = asyncio.run(
                    time_to_first_response_under_load(
                        server.url, archives[versions : 2 * versions], args.clients
                    )
                )
                quiet, quiet_failed, _ = asyncio.run(latency_under(server.url, seconds, 4, None))
                busy, busy_failed, swaps = asyncio.run(latency_under(server.url, seconds, 4, 3.0))
                cold, warm = cold_loads(http, archives[:4], rounds)
        finally:
            server.stop()
    print("\nupload -> promote -> first response of the new version (rank 16, all linear)")
    for label, phases in (("idle", idle), (f"{args.clients} clients served", loaded)):
        print(f"  {label}:")
        for phase, times in phases.items():
            print(f"    {phase:15s} {summary(times)}")
    print(f"  requests served to the other clients meanwhile: {background}")
    print(f"\nrequest latency, 4 closed-loop clients, {seconds:.0f} s each")
    print(
        f"  no swaps:            {summary(quiet)}  {len(quiet) / seconds:5.2f} req/s"
        f"  failed {quiet_failed}"
    )
    print(
        f"  swap every 3 s ({swaps:2d}): {summary(busy)}  {len(busy) / seconds:5.2f} req/s"
        f"  failed {busy_failed}"
    )
    print(
        f"  ratio with/without swaps: p50 {percentile(busy, 50) / percentile(quiet, 50):.2f}  "
        f"p95 {percentile(busy, 95) / percentile(quiet, 95):.2f}  "
        f"p99 {percentile(busy, 99) / percentile(quiet, 99):.2f}  "
        f"req/s {len(busy) / len(quiet):.2f}"
    )
    print("\ncold loads (4 adapters cycled, engine keeps 2)")
    print(f"  cold: {summary(cold)}")
    print(f"  warm: {summary(warm)}")
    print(f"  mean cold-load penalty: {statistics.mean(cold) - statistics.mean(warm):.3f} s")


if __name__ == "__main__":
    main()
