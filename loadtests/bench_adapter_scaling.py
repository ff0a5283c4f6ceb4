"""Throughput retention as the number of distinct adapters in the mix grows: 1, 2, 4, ... up
to `--adapters` (16).

One `hotswap serve` on loopback (the CPU's default dtype, `adapters.cpu_dtype`; `max_loras` =
`--adapters` by default, so that every adapter of the mix can share a batch; a smaller
`--max-loras` makes the engine's slots churn as adapters rotate), PEFT LoRAs (rank 8 on q/v;
`--rank`, `--targets`). Every run sends the same streamed chat requests (same prompts,
greedy), spread round-robin over k adapters; a base-model run comes before each mix and after
the last, and each mix is compared with the mean of the two base runs around it (so slow
drift of a shared machine cancels). Prints the table and writes a plot (`--plot`, default
`docs/img/adapter_scaling.png`).

    .venv/bin/python loadtests/bench_adapter_scaling.py          # a few minutes
    .venv/bin/python loadtests/bench_adapter_scaling.py --long   # more requests, 2 passes
    .venv/bin/python loadtests/bench_adapter_scaling.py --adapters 32 --max-loras 8 \
        --rank 16 --targets all                                  # 32 in rotation through 8 slots
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.cpu_dtype import default_cpu_dtype  # noqa: E402
from loadtests.bench_engine import ALL_LINEAR, make_adapters  # noqa: E402
from loadtests.bench_vs_vllm import base_name  # noqa: E402
from loadtests.workload import load_prompts, request_mix, run_calls  # noqa: E402
from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.server import start_server  # noqa: E402

PLOT = ROOT / "docs" / "img" / "adapter_scaling.png"
DTYPE = default_cpu_dtype()


@dataclass
class Retention:
    """Per mix, per pass: the mix's tokens/s ÷ the mean of the base runs before and after it,
    and for mixes wider than the slots ÷ a base run right after it with at most `max_loras`
    requests at once (`slot_bound`): one step holds at most `max_loras` adapters, so a mix of
    one request per adapter batches no more rows than that whatever the concurrency, and the
    second ratio is what the adapters themselves cost, slot changes included."""

    base: dict[int, list[float]]
    slot_bound: dict[int, list[float]]


async def measure(
    url: str, base: str, adapters: list[str], max_loras: int, args: argparse.Namespace
) -> Retention:
    prompts = load_prompts()

    async def rate(models: list[str], concurrency: int = args.concurrency) -> float:
        calls = request_mix(models, prompts, args.requests)
        result = await run_calls(url, calls, concurrency, args.max_tokens)
        return result.tokens_per_s

    await run_calls(url, request_mix(adapters, prompts, len(adapters)), 8, 4)  # load all
    mixes = mix_sizes(len(adapters))
    retention = Retention({k: [] for k in mixes}, {})
    bound_concurrency = min(max_loras, args.concurrency)
    for _ in range(args.passes):
        before = await rate([base])
        for k in mixes:
            mixed = await rate(adapters[:k])
            after = await rate([base])
            retention.base[k].append(mixed / ((before + after) / 2))
            line = (
                f"{k:2d} adapters: {mixed:7.1f} tok/s, base around it {before:7.1f} / "
                f"{after:7.1f}: retention {retention.base[k][-1]:.2f}"
            )
            if k > max_loras and bound_concurrency < args.concurrency:
                bound = await rate([base], bound_concurrency)
                retention.slot_bound.setdefault(k, []).append(mixed / bound)
                line += (
                    f"; base at {bound_concurrency} concurrent {bound:7.1f}: "
                    f"{retention.slot_bound[k][-1]:.2f}"
                )
            print(line, flush=True)
            before = after
    return retention


def mix_sizes(adapters: int) -> list[int]:
    """1, 2, 4, ... below `adapters`, then `adapters`."""
    sizes = [2**i for i in range(adapters.bit_length()) if 2**i < adapters]
    return [*sizes, adapters]


def plot(retention: dict[int, float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6))
    axes.plot(list(retention), list(retention.values()), marker="o", label="hotswap")
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="base model only")
    axes.set_xscale("log", base=2)
    axes.set_xticks(list(retention), [str(k) for k in retention])
    axes.set_ylim(0, max(1.1, *retention.values()) * 1.05)
    axes.set_xlabel("distinct adapters in the mix")
    axes.set_ylabel("throughput ÷ base model")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32, help="per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--long", action="store_true", help="64 requests of 64 tokens, 2 passes")
    parser.add_argument("--adapters", type=int, default=16, help="the largest mix")
    parser.add_argument("--max-loras", type=int, help="engine slots (default: --adapters)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", choices=["qv", "all"], default="qv")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"default {PLOT.name}")
    args = parser.parse_args()
    max_loras = args.max_loras or args.adapters
    targets = ALL_LINEAR if args.targets == "all" else ["q_proj", "v_proj"]
    if args.long:
        args.requests, args.max_tokens, args.passes = 64, 64, 2
    base = prepare_default_base_model(Settings().home)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adapters = make_adapters(base, tmp, args.adapters, args.rank, targets)
        (tmp / "home").mkdir()
        server = start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=base,
            args=["--dtype", DTYPE, *(f"--adapter={p.name}={p}" for p in adapters)],
            env={
                "HOTSWAP_MAX_LORAS": str(max_loras),
                "HOTSWAP_MAX_LORA_RANK": str(max(16, args.rank)),
                "HOTSWAP_MAX_CPU_LORAS": str(max(args.adapters, max_loras)),
            },
        )
        try:
            names = [p.name for p in adapters]
            retention = asyncio.run(
                measure(server.url, base_name(server.url), names, max_loras, args)
            )
        finally:
            server.stop()
    medians = {k: statistics.median(values) for k, values in retention.base.items()}
    bounded = {k: statistics.median(values) for k, values in retention.slot_bound.items()}
    title = (
        f"{args.requests} streamed requests x {args.max_tokens} tokens, {args.concurrency} "
        f"concurrent; LoRA rank {args.rank} on {'all linear' if args.targets == 'all' else 'q/v'}"
        f", {max_loras} slots, {DTYPE}, CPU"
    )
    print(f"\n{title}")
    slot_column = f"x base at {min(max_loras, args.concurrency)} concurrent"
    print(f"{'adapters':>9} {'x base':>7} {slot_column:>27}")
    for k, value in medians.items():
        bound = f"{bounded[k]:27.2f}" if k in bounded else f"{'-':>27}"
        print(f"{k:9d} {value:7.2f} {bound}")
    plot(medians, title, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
