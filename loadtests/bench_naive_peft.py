"""hotswap vs the naive path: transformers + PEFT, 8 adapters, switching between batches.

The naive path is what a user writes first: one `PeftModel` with 8 LoRAs loaded, and for each
adapter `set_adapter(name)` then one `generate` over that adapter's requests (left-padded
batch, greedy). hotswap gets the same requests (same chat messages, same adapters, greedy,
both in the CPU's default dtype, `adapters.cpu_dtype`) through a `hotswap serve` on loopback,
all sent at once as streamed chat completions: the engine batches the 8 adapters together.
Runs alternate (naive, hotswap, naive, hotswap ...); completion tokens/s, counted up to and
including the end-of-sequence token, and the ratio.

    .venv/bin/python loadtests/bench_naive_peft.py           # a few minutes
    .venv/bin/python loadtests/bench_naive_peft.py --long
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.cpu_dtype import default_cpu_dtype  # noqa: E402
from loadtests.bench_engine import make_adapters  # noqa: E402
from loadtests.workload import (  # noqa: E402
    REPLY_INSTRUCTION,
    Call,
    load_prompts,
    request_mix,
    run_calls,
)
from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.server import start_server  # noqa: E402

ADAPTERS = 8
DTYPE = default_cpu_dtype()


class NaivePeft:
    """transformers + PEFT: every adapter loaded in one model, one batch per adapter."""

    def __init__(self, base: Path, adapters: list[Path]) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, DTYPE))
        self.model: Any = PeftModel.from_pretrained(
            model, adapters[0], adapter_name=adapters[0].name
        )
        for path in adapters[1:]:
            self.model.load_adapter(path, adapter_name=path.name)
        self.model.eval()

    def run(self, calls: list[Call], max_tokens: int) -> float:
        """Completion tokens/s over all calls, adapter by adapter."""
        by_adapter: dict[str, list[str]] = defaultdict(list)
        for call in calls:
            by_adapter[call.model].append(call.prompt)
        eos = self.tokenizer.eos_token_id
        produced = 0
        started = time.perf_counter()
        for name, prompts in by_adapter.items():
            self.model.set_adapter(name)
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": REPLY_INSTRUCTION + p}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for p in prompts
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True)
            with self.torch.inference_mode():
                out = self.model.generate(
                    **batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=eos
                )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                produced += row.index(eos) + 1 if eos in row else len(row)
        return produced / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="per run, 1/8 per adapter")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--long", action="store_true", help="128 requests of 64 tokens, 3 rounds")
    args = parser.parse_args()
    if args.long:
        args.requests, args.max_tokens, args.rounds = 128, 64, 3
    base = prepare_default_base_model(Settings().home)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adapters = make_adapters(base, tmp, ADAPTERS, 8, ["q_proj", "v_proj"])
        calls = request_mix([p.name for p in adapters], load_prompts(), args.requests)
        (tmp / "home").mkdir()
        server = start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=base,
            args=["--dtype", DTYPE, *(f"--adapter={p.name}={p}" for p in adapters)],
        )
        try:
            naive = NaivePeft(base, adapters)
            naive.run(calls[:ADAPTERS], 4)  # warm both sides: every adapter once
            asyncio.run(run_calls(server.url, calls[:ADAPTERS], ADAPTERS, 4))
            rates: dict[str, list[float]] = {"transformers+PEFT": [], "hotswap": []}
            for round_no in range(args.rounds):
                rates["transformers+PEFT"].append(naive.run(calls, args.max_tokens))
                served = asyncio.run(run_calls(server.url, calls, len(calls), args.max_tokens))
                rates["hotswap"].append(served.tokens_per_s)
                print(
                    f"round {round_no + 1}: naive {rates['transformers+PEFT'][-1]:7.1f} tok/s, "
                    f"hotswap {rates['hotswap'][-1]:7.1f} tok/s",
                    flush=True,
                )
        finally:
            server.stop()
    print(
        f"\n{args.requests} requests ({args.requests // ADAPTERS} per adapter) x {args.max_tokens} "
        f"tokens max, greedy, {DTYPE}; {ADAPTERS} LoRAs rank 8 on q/v; median of {args.rounds} runs"
    )
    naive_rate = statistics.median(rates["transformers+PEFT"])
    for label, values in rates.items():
        rate = statistics.median(values)
        print(f"{label:>18} {rate:8.1f} tok/s {rate / naive_rate:6.2f}x")


if __name__ == "__main__":
    main()
