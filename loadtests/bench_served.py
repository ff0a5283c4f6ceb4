"""Served vs in-process: the same engine and requests, through `hotswap serve` and called directly.

Engines with the same settings run at once (bf16, max_model_len 2048, max_num_seqs 64,
max_loras 8, max_lora_rank 16, 1 GiB KV cache, the same PEFT LoRAs): one behind `hotswap
serve`, one driven by hotswap's engine wrapper (`server.engine.Engine`, the code the server
calls) in this process, and one more server per `--also` (the same with some environment
variables changed: a vLLM or hotswap setting to compare). Each round sends the same greedy
chat requests, round-robin over the base model and the adapters, to each in turn (the order
reversed every other round), the others idle while one is measured:
- served: streamed `/v1/chat/completions` over loopback HTTP, as `bench_vs_vllm.py` sends;
- in-process: `Engine.generate` on prompts rendered before the clock starts, so everything
  the server adds (HTTP, validation, rendering, SSE, metrics) counts against it.

Printed per round and over all rounds: completion tokens/s, time to the first token, and CPU
seconds per 1,000 tokens of each process of the path: the API process (`hotswap serve`; none
in-process), the engine core (vLLM's scheduler), its worker (the model) and this process (the
HTTP client when served). `--profile FILE` adds one served round under py-spy (not counted)
and prints where the API process spends its CPU, by layer and by function.

    .venv/bin/python loadtests/bench_served.py                  # about 8 minutes
    .venv/bin/python loadtests/bench_served.py --profile /tmp/api.txt \
        --also "one core kept:HOTSWAP_CPU_RESERVED_CORES=1"
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.cpu_dtype import default_cpu_dtype  # noqa: E402
from loadtests.bench_engine import make_adapters  # noqa: E402
from loadtests.bench_swap import percentile  # noqa: E402
from loadtests.bench_vs_vllm import ENGINE, KV_CACHE_GIB, Served, base_name, start_hotswap  # noqa: E402
from loadtests.workload import (  # noqa: E402
    REPLY_INSTRUCTION,
    Call,
    RunResult,
    Streamed,
    closed_loop,
    load_prompts,
    request_mix,
    run_calls,
)
from server.base_model import prepare_default_base_model, resolve_base_model  # noqa: E402
from server.engine import Engine, LoraTarget, Sampling  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.server import stop_process  # noqa: E402

SERVED = "served"
IN_PROCESS = "in-process"
PROFILE_RATE = 200  # py-spy samples per second
PROFILE_ATTACH_TRIES = 5
PROFILE_ATTACH_S = 3.0
# Where the API process's samples go, by the first frame (leaf upwards) whose file matches.
LAYERS = (
    ("vLLM output processing, detokenizing", ("vllm/v1/engine/output_processor", "detokenizer")),
    ("vLLM engine client (ZMQ, msgspec)", ("vllm/v1/engine/core_client", "zmq/", "msgspec")),
    ("hotswap generation", ("server/generation", "server/engine.py")),
    ("hotswap HTTP routes, rendering", ("server/http/",)),
    ("metrics", ("prometheus_client", "server/metrics")),
    ("tokenizer", ("tokenizers", "transformers/tokenization")),
    ("JSON", ("json/", "orjson", "pydantic")),
    ("ASGI, HTTP server", ("uvicorn", "starlette", "fastapi", "h11", "httptools", "anyio")),
    ("asyncio event loop", ("asyncio/", "selectors", "uvloop")),
    ("gRPC", ("grpc",)),
)


@dataclass
class Cpu:
    """CPU seconds of a path's processes: the API process (none in-process), the engine core,
    the worker that runs the model (with the path's other children: the server's grammar and
    validation workers, idle here), and this process (the HTTP client when served)."""

    api: float = 0.0
    engine_core: float = 0.0
    worker: float = 0.0
    client: float = 0.0

    def minus(self, other: Cpu) -> Cpu:
        return Cpu(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def per(self, count: float) -> Cpu:
        return Cpu(*(a / count for a in astuple(self)))


@dataclass
class Round:
    """One measured round of one path: its requests' timings and the CPU it took."""

    result: RunResult
    cpu: Cpu

    def per_kilotoken(self) -> Cpu:
        return self.cpu.per(sum(r.completion_tokens for r in self.result.requests) / 1000)


@dataclass
class Processes:
    """A path's processes: its API process (None in-process) and its engine's processes."""

    api: psutil.Process | None
    engine: list[psutil.Process]

    @classmethod
    def served(cls, pid: int) -> Processes:
        api = psutil.Process(pid)
        return cls(api, api.children(recursive=True))

    @classmethod
    def in_process(cls, servers: Sequence[Processes]) -> Processes:
        """This process's children that belong to no server: the in-process engine's."""
        theirs = {p.pid for s in servers for p in [*s.engine, *([s.api] if s.api else [])]}
        mine = psutil.Process().children(recursive=True)
        return cls(None, [p for p in mine if p.pid not in theirs])

    def cpu(self) -> Cpu:
        core = [p for p in self.engine if _name(p).startswith("VLLM::EngineCore")]
        rest = [p for p in self.engine if p not in core]
        return Cpu(
            _cpu_s(self.api) if self.api else 0.0,
            sum(map(_cpu_s, core)),
            sum(map(_cpu_s, rest)),
            _cpu_s(psutil.Process()),
        )


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.NoSuchProcess:
        return ""


def _cpu_s(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:  # a grammar worker retired mid-run
        return 0.0
    return float(times.user + times.system)


async def stream_in_process(
    engine: Engine, prompt: list[int], lora: LoraTarget | None, max_tokens: int, tag: str
) -> Streamed:
    """One request through `Engine.generate`: time to the first text, tokens produced."""
    started = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
    async for chunk in engine.generate(prompt, sampling, tag, lora):
        if ttft is None and chunk.text:
            ttft = time.perf_counter() - started
        tokens = chunk.completion_tokens
    latency = time.perf_counter() - started
    return Streamed(ttft if ttft is not None else latency, latency, tokens)


async def run_in_process(
    engine: Engine,
    calls: Sequence[Call],
    prompts: dict[str, list[int]],
    loras: dict[str, LoraTarget | None],
    concurrency: int,
    max_tokens: int,
) -> RunResult:
    """`calls` with `concurrency` closed-loop clients, as `workload.run_calls` sends them."""
    tags = itertools.count()

    def send(call: Call) -> Awaitable[Streamed]:
        tag = f"inproc-{next(tags)}-{time.monotonic_ns()}"
        return stream_in_process(engine, prompts[call.prompt], loras[call.model], max_tokens, tag)

    return await closed_loop(calls, concurrency, send)


async def timed(processes: Processes, run: Callable[[], Awaitable[RunResult]]) -> Round:
    before = processes.cpu()
    result = await run()
    return Round(result, processes.cpu().minus(before))


def start_in_process(base: Path, adapters: list[Path]) -> tuple[Engine, dict[str, LoraTarget]]:
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = KV_CACHE_GIB
    fields = {"dtype": default_cpu_dtype(), "max_cpu_loras": 32, **ENGINE}
    settings = Settings.model_validate(fields)
    engine = Engine(settings, resolve_base_model(str(base), settings.home))
    engine.start_blocking()
    loras = {p.name: LoraTarget(p.name, i + 1, p) for i, p in enumerate(adapters)}
    return engine, loras


def profile_api(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the API process, collapsed stacks, until SIGINT: only the thread holding the
    GIL is sampled (`--gil`), so waits in locks, queues and the event loop's poll are left
    out and the samples are the process's Python CPU. py-spy sometimes fails to read the
    interpreter's version on attaching: a start that exits at once is retried."""
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [str(py_spy), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE)]
    command += [
        "--format",
        "raw",
        "--duration",
        "3600",
        "--output",
        str(out),
        "--nonblocking",
        "--gil",
    ]
    error = b""
    for _ in range(PROFILE_ATTACH_TRIES):
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, error = spy.communicate(timeout=PROFILE_ATTACH_S)
        except subprocess.TimeoutExpired:
            return spy  # attached and sampling
    raise RuntimeError(f"py-spy could not attach to {pid}: {error.decode()[:500]}")


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    """SIGINT: py-spy writes its output and exits."""
    spy.send_signal(signal.SIGINT)
    spy.wait(60)


def summarize_profile(raw: Path, seconds: float) -> str:
    """Top functions by own samples and the share of each layer (`LAYERS`)."""
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        layers[_layer(frames)] += count
    lines = [
        f"API process: {total} samples at {PROFILE_RATE}/s over {seconds:.0f} s "
        f"({total / PROFILE_RATE / seconds:.0%} of one core running Python)"
    ]
    lines += ["", "by layer (the innermost frame that names one):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in layers.most_common()]
    lines += ["", "by function (own samples):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(20)]
    return "\n".join(lines)


def _layer(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for name, marks in LAYERS:
            if any(mark in frame for mark in marks):
                return name
    return "other"


def report(rounds: dict[str, list[Round]]) -> None:
    print(
        f"\n{'path':>24} {'tok/s':>7} {'spread':>13} {'TTFT p50':>9} {'TTFT p95':>9}   "
        f"CPU s per 1k tokens: {'API':>5} {'core':>5} {'worker':>6} {'client':>6}"
    )
    summary = {}
    for label, runs in rounds.items():
        rates = [r.result.tokens_per_s for r in runs]
        ttfts = [t for r in runs for t in r.result.ttfts]
        per = [r.per_kilotoken() for r in runs]
        summary[label] = (statistics.median(rates), percentile(ttfts, 50), percentile(ttfts, 95))
        cpu = [statistics.median(getattr(p, f) for p in per) for f in Cpu.__dataclass_fields__]
        print(
            f"{label:>24} {summary[label][0]:7.1f} {min(rates):6.1f}-{max(rates):<6.1f} "
            f"{summary[label][1] * 1000:7.0f}ms {summary[label][2] * 1000:7.0f}ms   "
            f"{'':>20} {cpu[0]:5.2f} {cpu[1]:5.2f} {cpu[2]:6.2f} {cpu[3]:6.2f}"
        )
    others = [label for label in rounds if label not in (SERVED, IN_PROCESS)]
    pairs_to_show = [(SERVED, IN_PROCESS, "(goal ≥ 0.9)")] + [(o, SERVED, "") for o in others]
    for label, than, goal in pairs_to_show:
        pairs = zip(rounds[label], rounds[than], strict=True)
        ratios = [a.result.tokens_per_s / b.result.tokens_per_s for a, b in pairs]
        print(
            f"\n{label} / {than} throughput per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f} {goal}\n"
            f"{label} / {than} TTFT p50 {summary[label][1] / summary[than][1]:.2f}, "
            f"p95 {summary[label][2] / summary[than][2]:.2f}"
        )


async def measure(
    servers: dict[str, Served],
    engine: Engine,
    loras: dict[str, LoraTarget | None],
    calls: list[Call],
    args: argparse.Namespace,
) -> dict[str, list[Round]]:
    """Warm every path, then the rounds, paths in turn (reversed every other round)."""
    prompts = {
        call.prompt: await asyncio.to_thread(
            engine.render_chat, [{"role": "user", "content": REPLY_INSTRUCTION + call.prompt}]
        )
        for call in calls
    }
    processes = {label: Processes.served(s.process.pid) for label, s in servers.items()}
    processes[IN_PROCESS] = Processes.in_process(list(processes.values()))
    paths: dict[str, Callable[..., Awaitable[RunResult]]] = {  # called with `calls=`
        label: functools.partial(
            run_calls, concurrency=args.concurrency, max_tokens=args.max_tokens, url=server.url
        )
        for label, server in servers.items()
    }
    paths[IN_PROCESS] = functools.partial(
        run_in_process,
        engine=engine,
        prompts=prompts,
        loras=loras,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
    )
    warm = calls[: args.adapters + 1]
    for run in paths.values():  # every adapter loaded, every path's first call made
        await run(calls=warm)
    rounds: dict[str, list[Round]] = {label: [] for label in paths}
    for round_no in range(args.rounds):
        order = list(paths) if round_no % 2 == 0 else list(reversed(paths))
        for label in order:
            measured = await timed(processes[label], functools.partial(paths[label], calls=calls))
            rounds[label].append(measured)
            print(
                f"round {round_no + 1} {label:>24}: {measured.result.tokens_per_s:7.1f} tok/s  "
                f"TTFT p50 {percentile(measured.result.ttfts, 50) * 1000:6.0f} ms",
                flush=True,
            )
    if args.profile:
        spy = profile_api(servers[SERVED].process.pid, args.profile.with_suffix(".raw"))
        started = time.monotonic()
        await paths[SERVED](calls=calls)
        seconds = time.monotonic() - started
        stop_profile(spy)
        args.profile.write_text(summarize_profile(args.profile.with_suffix(".raw"), seconds))
    return rounds


def server_variant(spec: str) -> tuple[str, dict[str, str]]:
    """`LABEL:VAR=VALUE[,VAR=VALUE]` as (label, environment)."""
    label, _, assignments = spec.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if "=" in item)
    if not label or not env:
        raise SystemExit(f"--also {spec!r}: expected LABEL:VAR=VALUE[,VAR=VALUE]")
    return f"served, {label}", env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4, help="distinct LoRAs in the mix")
    parser.add_argument("--requests", type=int, default=128, help="per round and path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--profile", type=Path, help="py-spy summary of one more served round")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
        help="one more hotswap server, with these environment variables, measured beside the "
        'others; e.g. "one core kept:HOTSWAP_CPU_RESERVED_CORES=1"',
    )
    args = parser.parse_args()
    base = prepare_default_base_model(Settings().home)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adapters = make_adapters(base, tmp, args.adapters, 8, ["q_proj", "v_proj"])
        kinds = {SERVED: {}, **dict(map(server_variant, args.also))}
        serving: dict[str, Future[Served]] = {}
        engine: Engine | None = None
        try:
            with ThreadPoolExecutor() as pool:  # started side by side: minutes each on 2 cores
                serving = {
                    label: pool.submit(start_hotswap, base, adapters, tmp / str(i), label, env)
                    for i, (label, env) in enumerate(kinds.items())
                }
                engine, loras = start_in_process(base, adapters)
            # every start has ended here; the first that failed raises
            servers = {label: future.result() for label, future in serving.items()}
            name = base_name(servers[SERVED].url)
            calls = request_mix([name, *(p.name for p in adapters)], load_prompts(), args.requests)
            targets: dict[str, LoraTarget | None] = {name: None, **loras}
            rounds = asyncio.run(measure(servers, engine, targets, calls, args))
        finally:
            for future in serving.values():
                if future.exception() is None:
                    stop_process(future.result().process, 60)
            if engine is not None:
                engine.shutdown()
    print(
        f"\n{args.rounds} rounds x {args.requests} streamed requests, {args.concurrency} "
        f"concurrent, {args.max_tokens} tokens max, greedy; base + {args.adapters} LoRAs "
        "(rank 8, q/v) round-robin"
    )
    report(rounds)
    if args.profile:
        print(f"\n{args.profile.read_text()}")


if __name__ == "__main__":
    main()
