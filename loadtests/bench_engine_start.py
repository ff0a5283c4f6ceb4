"""Engine start time on CPU: vLLM's AOT compile artifact against torch's own compile caches.

Starts the server's engine (`server.engine.Engine`, the default settings) in a fresh process
per start, with `VLLM_USE_AOT_COMPILE` set to each value in turn, rounds interleaved, and
prints the seconds from `Engine` creation to ready, median and spread per setting, and their
ratio. The first start of each setting may fill an empty cache: `--warm` starts (not counted)
come first. See `adapters/cpu_compile_cache.py` for why the AOT artifact is off on CPU.

    .venv/bin/python loadtests/bench_engine_start.py              # about 10 minutes
    .venv/bin/python loadtests/bench_engine_start.py --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.cpu_compile_cache import AOT_COMPILE_VAR  # noqa: E402

SETTINGS = {"vLLM AOT artifact": "1", "torch caches": "0"}


def start_once(aot: str, queue: multiprocessing.Queue) -> None:
    """Start the default engine with `VLLM_USE_AOT_COMPILE=aot`; put the seconds to ready."""
    os.environ[AOT_COMPILE_VAR] = aot
    from server.base_model import resolve_base_model
    from server.engine import Engine
    from server.settings import Settings

    settings = Settings()
    base = resolve_base_model(settings.base_model, settings.home)
    started = time.perf_counter()
    engine = Engine(settings, base)
    engine.start_blocking()
    queue.put(time.perf_counter() - started)
    engine.shutdown()


def timed_start(aot: str) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    process = context.Process(target=start_once, args=(aot, queue))
    process.start()
    seconds = float(queue.get())
    process.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=1, help="uncounted starts per setting first")
    args = parser.parse_args()
    for aot in SETTINGS.values():
        for _ in range(args.warm):
            timed_start(aot)
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for index in range(args.rounds):
        order = list(SETTINGS.items())
        if index % 2:
            order.reverse()
        for name, aot in order:
            times[name].append(timed_start(aot))
            print(f"round {index + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    print(f"\nengine start, default settings, {args.rounds} interleaved rounds, median [min-max]")
    for name, values in times.items():
        spread = f"[{min(values):.1f}-{max(values):.1f}]"
        print(f"{name:>18}: {statistics.median(values):6.1f} s {spread}")
    ratios = [t / a for t, a in zip(times["torch caches"], times["vLLM AOT artifact"], strict=True)]
    print(
        f"torch caches / AOT artifact: {statistics.median(ratios):.2f} "
        f"[{min(ratios):.2f}-{max(ratios):.2f}]"
    )


if __name__ == "__main__":
    main()
