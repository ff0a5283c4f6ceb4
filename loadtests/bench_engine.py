"""Engine throughput: base model vs 1, 2, 4 and 8 LoRA adapters mixed in one batch.

Runs hotswap's own engine wrapper (the code the server uses), same prompts for every mix,
and prints tokens/s and the ratio to the base model measured in the same run. With
`--fast-cpu-lora both` it repeats the whole table with hotswap's CPU LoRA kernels off and
on, each in a fresh engine. With `--rounds N` every mix runs N times, interleaved (each round
in another order), and the table gives each mix's median ratio to the base of the same round
and the spread over the rounds.

    .venv/bin/python loadtests/bench_engine.py                 # a few minutes
    .venv/bin/python loadtests/bench_engine.py --long          # more requests and tokens
    .venv/bin/python loadtests/bench_engine.py --fast-cpu-lora on --rank 16 --targets all \
        --rounds 3 --mixes 0 8                                 # one goal, three rounds
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
from pathlib import Path

from server.base_model import resolve_base_model
from server.engine import Engine, LoraTarget, Sampling
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.adapters import make_random_lora  # noqa: E402

MIXES = (0, 1, 2, 4, 8)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOPICS = ["the sea", "a library", "winter", "trains", "coffee", "mountains", "a market", "rain"]


def make_adapters(base: Path, root: Path, count: int, rank: int, targets: list[str]) -> list[Path]:
    return [
        make_random_lora(base, root / f"bench-{i}", seed=100 + i, rank=rank, target_modules=targets)
        for i in range(count)
    ]


async def measure(
    engine: Engine, adapters: list[Path], mix: int, requests: int, tokens: int
) -> float:
    """Tokens/s for `requests` concurrent requests spread round-robin over `mix` adapters."""
    loras = [LoraTarget(f"bench-{i}", i + 1, path) for i, path in enumerate(adapters[:mix])]
    sampling = Sampling(max_tokens=tokens, temperature=0.0)
    prompts = [
        engine.render_chat([{"role": "user", "content": f"Write a long story about {t}."}])
        for t in TOPICS
    ]

    async def one(i: int) -> int:
        lora = loras[i % mix] if mix else None
        count = 0
        async for chunk in engine.generate(prompts[i % len(prompts)], sampling, f"b{i}", lora):
            count = chunk.completion_tokens
        return count

    if loras:  # load every adapter before timing: this measures batching, not cold loads
        await asyncio.gather(*(one(i) for i in range(mix)))
    started = time.perf_counter()
    produced = await asyncio.gather(*(one(i) for i in range(requests)))
    return sum(produced) / (time.perf_counter() - started)


def round_order(mixes: list[int], round_index: int) -> list[int]:
    """The mixes of one round, rotated by the round's index so that no mix always runs first
    (or right after the same neighbour)."""
    shift = round_index % len(mixes)
    return mixes[shift:] + mixes[:shift]


async def measure_all(
    engine: Engine, adapters: list[Path], args: argparse.Namespace
) -> list[dict[int, float]]:
    """Every mix of every round in one event loop (the engine's output handler lives in it)."""
    rounds = []
    for index in range(args.rounds):
        rates = {}
        for mix in round_order(args.mixes, index):
            rates[mix] = await measure(engine, adapters, mix, args.requests, args.tokens)
        rounds.append(rates)
    return rounds


def run_table(fast_cpu_lora: bool, args: argparse.Namespace, queue: multiprocessing.Queue) -> None:
    """One engine with the fast CPU LoRA ops on or off; puts every round's rates in `queue`."""
    settings = Settings(fast_cpu_lora=fast_cpu_lora, max_loras=8, max_lora_rank=args.rank)
    base = resolve_base_model(settings.base_model, settings.home)
    with tempfile.TemporaryDirectory() as tmp:
        targets = ALL_LINEAR if args.targets == "all" else ["q_proj", "v_proj"]
        adapters = make_adapters(base.path, Path(tmp), max(args.mixes), args.rank, targets)
        engine = Engine(settings, base)
        engine.start_blocking()
        try:
            results = asyncio.run(measure_all(engine, adapters, args))
        finally:
            engine.shutdown()
    queue.put(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", choices=["qv", "all"], default="qv")
    parser.add_argument("--fast-cpu-lora", choices=["on", "off", "both"], default="both")
    parser.add_argument("--long", action="store_true", help="128 requests of 128 tokens")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every mix")
    parser.add_argument(
        "--mixes",
        type=int,
        nargs="+",
        choices=MIXES,
        default=list(MIXES),
        help="adapter counts to run (0: the base model, always run)",
    )
    args = parser.parse_args()
    if args.long:
        args.requests, args.tokens = 128, 128
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.mixes = sorted(set(args.mixes) | {0})
    settings_to_run = {"on": [True], "off": [False], "both": [False, True]}[args.fast_cpu_lora]
    context = multiprocessing.get_context("spawn")
    tables: dict[str, list[dict[int, float]]] = {}
    for fast in settings_to_run:
        queue: multiprocessing.Queue = context.Queue()
        process = context.Process(target=run_table, args=(fast, args, queue))
        process.start()
        tables["on" if fast else "off"] = queue.get()
        process.join()
    print(
        f"\n{args.requests} requests x {args.tokens} tokens, greedy; adapters rank {args.rank} "
        f"on {args.targets}; {args.rounds} interleaved round(s), median [min-max]"
    )
    print(f"{'fast CPU LoRA':>14} {'adapters':>9} {'tokens/s':>10} {'x base':>7} {'spread':>11}")
    for label, rounds in tables.items():
        for mix in args.mixes:
            rates = [r[mix] for r in rounds]
            ratios = [r[mix] / r[0] for r in rounds]
            print(
                f"{label:>14} {mix or 'base':>9} {statistics.median(rates):10.1f} "
                f"{statistics.median(ratios):7.2f} {min(ratios):5.2f}-{max(ratios):.2f}"
            )
    print(json.dumps(tables))


if __name__ == "__main__":
    main()
