"""Ordinary clients beside one hostile client, against a real `hotswap serve` with API keys.

Rounds alternate (quiet, hostile, hostile, quiet, ...): ordinary closed-loop clients alone,
then the same clients while one hostile client (its own process) sends every hostile request
of `tests/security/payloads.py` in a loop, plus 32 MB bodies over a raw socket (keyless, and
over the cap with a key) and hostile gRPC calls. Reported: the ordinary clients' p50/p99 and
failures per kind of round and their ratio (goal: p99 within 1.5x, no failed ordinary
request), the hostile answers by status (goal: no 5xx), the slowest `/healthz` (goal: < 1 s)
and the connections the server made to a local listener the hostile `$ref`s point at (goal: 0).

    .venv/bin/python loadtests/bench_hostile.py                     # 3 pairs of 20 s rounds
    .venv/bin/python loadtests/bench_hostile.py --rounds 5 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.bench_swap import percentile  # noqa: E402
from loadtests.workload import load_prompts  # noqa: E402
from server.base_model import prepare_default_base_model  # noqa: E402
from server.grpc_api.gen.hotswap.v1 import adapters_pb2 as apb  # noqa: E402
from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc, inference_pb2_grpc  # noqa: E402
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.security.payloads import (  # noqa: E402
    ADMIN_KEY,
    BASE,
    HTTP_CASES,
    INFER_KEY,
    KEYS_ENV,
    MB,
    SCHEMAS,
    Sent,
    Target,
    pax_bomb,
)
from tests.security.watch import HealthProbe, OutsideListener  # noqa: E402
from tests.security.wire import send, send_streaming_body  # noqa: E402
from tests.support.adapters import make_random_lora  # noqa: E402
from tests.support.server import start_server  # noqa: E402

CLIENTS = 4
MAX_TOKENS = 8
UPLOAD_CAP = 8 * MB
RAW_BODY = 32 * MB
JSON = {"content-type": "application/json"}
MULTIPART = {"content-type": "multipart/form-data; boundary=hostile"}


# --- the ordinary clients ------------------------------------------------------------------


async def ordinary_round(url: str, seconds: float, prompts: list[str]) -> tuple[list[float], int]:
    """(latencies, failed requests) of `CLIENTS` closed-loop chat callers over base and alpha."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    headers = {"authorization": f"Bearer {INFER_KEY}"}

    async def caller(http: httpx.AsyncClient, index: int) -> None:
        nonlocal failures
        turn = index
        while time.monotonic() < deadline:
            body = {
                "model": (BASE, "alpha")[turn % 2],
                "messages": [{"role": "user", "content": prompts[turn % len(prompts)]}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }
            turn += CLIENTS
            started = time.perf_counter()
            try:
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await asyncio.gather(*(caller(http, i) for i in range(CLIENTS)))
    return latencies, failures


# --- the hostile client (its own process, so its CPU work does not skew the timings) --------


def hostile_loop(url: str, grpc_target: str, target: Target, stop: Any, out: Any) -> None:
    """Send every hostile request in turn until `stop` is set; put the statuses seen."""
    sents = [case.build(target) for case in HTTP_CASES]
    bomb = pax_bomb()
    statuses: Counter[str] = Counter()
    with (
        httpx.Client(base_url=url, timeout=120) as http,
        grpc.insecure_channel(grpc_target) as channel,
    ):
        inference = inference_pb2_grpc.InferenceStub(channel)
        adapters = adapters_pb2_grpc.AdaptersStub(channel)
        while not stop.is_set():
            for sent in sents:
                statuses[f"http {_status(http, sent)}"] += 1
            for head, path in _raw_sends():
                answer = send_streaming_body(url, head, RAW_BODY, path)
                statuses[f"raw {answer.status}"] += 1
            for call, request, key in _grpc_calls(inference, adapters, target, bomb):
                statuses[f"grpc {_grpc_status(call, request, key)}"] += 1
    out.put(dict(statuses))


def _status(http: httpx.Client, sent: Sent) -> int:
    try:
        return send(http, sent).status_code
    except httpx.HTTPError:
        return 0


def _raw_sends() -> list[tuple[dict[str, str], str]]:
    infer = {"authorization": f"Bearer {INFER_KEY}"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    return [
        (JSON, "/v1/chat/completions"),
        (MULTIPART, "/v1/adapters"),
        ({**JSON, **infer}, "/v1/generate"),
        ({**MULTIPART, **admin}, "/v1/adapters"),
    ]


def _grpc_calls(
    inference: inference_pb2_grpc.InferenceStub,
    adapters: adapters_pb2_grpc.AdaptersStub,
    target: Target,
    bomb: bytes,
) -> list[tuple[Any, Any, str | None]]:
    def upload() -> Any:
        header = apb.UploadHeader(filename="a", size=len(bomb), name="hostile-pax")
        yield apb.UploadAdapterRequest(header=header)
        yield apb.UploadAdapterRequest(chunk=bomb)

    schema = json.dumps(SCHEMAS["http-ref"](target))
    return [
        (inference.Generate, pb.GenerateRequest(text="x"), None),
        (inference.Generate, pb.GenerateRequest(text="x", schema_json=schema), INFER_KEY),
        (inference.Generate, pb.GenerateRequest(text="a" * (3 * MB)), INFER_KEY),
        (adapters.UploadAdapter, upload(), ADMIN_KEY),
    ]


def _grpc_status(call: Any, request: Any, key: str | None) -> str:
    metadata = () if key is None else (("authorization", f"Bearer {key}"),)
    try:
        call(request, metadata=metadata, timeout=120)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


# --- the run ---------------------------------------------------------------------------------


def run_round(
    server_url: str, grpc_target: str, target: Target, seconds: float, hostile: bool
) -> tuple[list[float], int, dict[str, int]]:
    """One round: (ordinary latencies, ordinary failures, hostile statuses)."""
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    process = None
    if hostile:
        process = context.Process(
            target=hostile_loop, args=(server_url, grpc_target, target, stop, out)
        )
        process.start()
    latencies, failures = asyncio.run(ordinary_round(server_url, seconds, load_prompts(200)))
    statuses: dict[str, int] = {}
    if process is not None:
        stop.set()
        statuses = out.get(timeout=300)
        process.join()
    return latencies, failures, statuses


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1000:6.0f} ms  p99 {percentile(values, 99) * 1000:6.0f} ms"
        f"  (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of rounds (quiet, hostile)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one round")
    args = parser.parse_args()
    base = prepare_default_base_model(Settings().home)
    outside = OutsideListener()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        alpha = make_random_lora(base, tmp / "alpha", seed=1, rank=8, target_modules=["q_proj"])
        secret = tmp / "secret.json"
        marker = f"hotswap-secret-{uuid.uuid4().hex}"
        secret.write_text(json.dumps({"type": "string", "enum": [marker]}))
        target = Target(outside.url, secret, marker, alpha)
        (tmp / "home").mkdir()
        server = start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=base,
            args=[f"--adapter=alpha={alpha}"],
            env={"HOTSWAP_API_KEYS": KEYS_ENV, "HOTSWAP_MAX_UPLOAD_BYTES": str(UPLOAD_CAP)},
        )
        rounds: dict[bool, list[tuple[list[float], int, dict[str, int]]]] = {False: [], True: []}
        try:
            asyncio.run(ordinary_round(server.url, 5.0, load_prompts(20)))  # warm-up
            with HealthProbe(server.url) as probe:
                for index in range(2 * args.rounds):
                    hostile = index % 4 in (1, 2)  # quiet, hostile, hostile, quiet, ...
                    result = run_round(
                        server.url, server.grpc_target, target, args.seconds, hostile
                    )
                    rounds[hostile].append(result)
                    kind = "hostile" if hostile else "quiet  "
                    print(f"round {index + 1} {kind}  {summary(result[0])}  failed {result[1]}")
            leaked = marker in server.log.read_text(errors="replace")
        finally:
            server.stop()
    outside.close()
    report(rounds, args.seconds, probe.slowest_s, outside.connections, leaked)


def report(
    rounds: dict[bool, list[tuple[list[float], int, dict[str, int]]]],
    seconds: float,
    slowest_healthz_s: float,
    connections: int,
    leaked: bool,
) -> None:
    quiet = [latency for result in rounds[False] for latency in result[0]]
    busy = [latency for result in rounds[True] for latency in result[0]]
    statuses: Counter[str] = Counter()
    for result in rounds[True]:
        statuses.update(result[2])
    n = len(rounds[False])
    print(f"\nordinary clients ({CLIENTS} closed-loop chat callers, {MAX_TOKENS} tokens), ", end="")
    print(f"{n} + {n} rounds of {seconds:.0f} s")
    for label, values, hostile in (("without", quiet, False), ("with   ", busy, True)):
        failed = sum(result[1] for result in rounds[hostile])
        rate = len(values) / (n * seconds)
        print(f"  {label} hostile client: {summary(values)}  {rate:5.2f} req/s  failed {failed}")
    print(
        f"  ratio with/without, all rounds pooled: p50 "
        f"{percentile(busy, 50) / percentile(quiet, 50):.2f}  "
        f"p99 {percentile(busy, 99) / percentile(quiet, 99):.2f}  "
        f"req/s {len(busy) / len(quiet):.2f}"
    )
    # Quiet and hostile rounds alternate in pairs (q h h q q h ...): the i-th of each kind
    # are neighbours in time, so their ratio is measured side by side.
    pairs = [
        percentile(hostile[0], 99) / percentile(quiet_round[0], 99)
        for quiet_round, hostile in zip(rounds[False], rounds[True], strict=True)
    ]
    print(
        f"  p99 ratio per pair of neighbouring rounds: median {statistics.median(pairs):.2f}, "
        f"spread {min(pairs):.2f}-{max(pairs):.2f} ({', '.join(f'{r:.2f}' for r in pairs)})"
    )
    errors = sum(count for status, count in statuses.items() if status.split()[1].startswith("5"))
    print(f"\nhostile answers ({sum(statuses.values())}): {dict(sorted(statuses.items()))}")
    print(f"  5xx: {errors}")
    print(f"slowest /healthz: {slowest_healthz_s * 1000:.0f} ms")
    print(f"connections to the outside listener: {connections}; secret in the log: {leaked}")


if __name__ == "__main__":
    main()
