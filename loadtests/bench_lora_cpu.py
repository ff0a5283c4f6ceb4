"""Multi-LoRA throughput on CPU: vLLM's own LoRA ops against hotswap's segment-grouped ones.

    .venv/bin/python loadtests/bench_lora_cpu.py            # a few minutes
    .venv/bin/python loadtests/bench_lora_cpu.py --long     # more requests and tokens
    .venv/bin/python loadtests/bench_lora_cpu.py --only "8 LoRAs r16 all" --profile

Every configuration runs the same prompts (greedy, `ignore_eos`, a fixed number of new tokens) in
its own engine, started in a subprocess with `HOTSWAP_FAST_CPU_LORA` set to 0 (vLLM's ops, "off")
or 1 (hotswap's, "on"), since the plugin is read when the engine starts. Adapters are random PEFT
LoRAs on the real base model (rank 16 on q,k,v,o,gate,up,down; rank 8 on q,v), written once under
`~/.cache/hotswap/bench-lora-cpu/`. Throughput is generated tokens over wall time from the first
request to the last token, prefill included; a run longer than `--max-seconds` is cut there and
its figure marked "cut" (vLLM's own ops with all-linear adapters are that slow).
`--profile` runs each engine in-process under torch.profiler and prints the operators that cost
the most.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOME = Path.home() / ".cache" / "hotswap"
ADAPTER_DIR = HOME / "bench-lora-cpu"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_KINDS = {"all16": (16, ALL_LINEAR), "qv8": (8, ("q_proj", "v_proj"))}
NUM_ADAPTERS = 8
MAX_LORAS = 8
RESULT_PREFIX = "BENCH-RESULT "


@dataclass(frozen=True)
class Config:
    """One engine to measure: which adapters the requests use, and whose LoRA ops."""

    name: str
    kind: str | None  # an ADAPTER_KINDS key; None: requests on the base model
    num_adapters: int  # requests go round-robin over this many adapters
    fast: bool  # HOTSWAP_FAST_CPU_LORA
    enable_lora: bool = True


def configs() -> list[Config]:
    """Base first (the reference), then every adapter setting with vLLM's ops and with ours."""
    runs = [
        Config("base (engine without LoRA)", None, 0, fast=True, enable_lora=False),
        Config("base requests on a LoRA engine", None, 0, fast=True),
    ]
    for label, kind, count in (
        ("1 LoRA r8 q,v", "qv8", 1),
        ("8 LoRAs r8 q,v", "qv8", NUM_ADAPTERS),
        ("1 LoRA r16 all", "all16", 1),
        ("8 LoRAs r16 all", "all16", NUM_ADAPTERS),
    ):
        for fast in (False, True):
            runs.append(Config(f"{label} / {'on' if fast else 'off'}", kind, count, fast))
    return runs


@dataclass(frozen=True)
class Workload:
    """The requests every configuration serves."""

    requests: int
    max_tokens: int
    max_seconds: float


def prompts(n: int) -> list[str]:
    """`n` different prompts of varied lengths (about 15 to 90 tokens)."""
    topics = ["the sea", "a lighthouse", "prime numbers", "a city at night", "bread", "rain"]
    out = []
    for i in range(n):
        detail = " and".join(f" the colour number {j}" for j in range(i % 7 * 3))
        out.append(f"Write a short story about {topics[i % len(topics)]}{detail}. Story {i}:")
    return out


# --- adapters --------------------------------------------------------------------------------


def ensure_adapters(base_model: Path) -> dict[str, list[Path]]:
    """Random LoRAs for every kind, made once (weights nonzero, outputs visibly changed)."""
    paths = {
        kind: [ADAPTER_DIR / f"{kind}-{i}" for i in range(NUM_ADAPTERS)] for kind in ADAPTER_KINDS
    }
    missing = [
        k for k, ps in paths.items() if not all((p / "adapter_config.json").is_file() for p in ps)
    ]
    if missing:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        for kind in missing:
            rank, targets = ADAPTER_KINDS[kind]
            model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
            config = LoraConfig(
                r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False
            )
            peft_model = get_peft_model(model, config)
            for i, path in enumerate(paths[kind]):
                g = torch.Generator().manual_seed(1000 * rank + i)
                for name, param in peft_model.named_parameters():
                    if "lora_A" in name:
                        param.data = torch.randn(param.shape, generator=g) / param.shape[1] ** 0.5
                    elif "lora_B" in name:
                        param.data = torch.randn(param.shape, generator=g) * 0.02
                peft_model.save_pretrained(path)
    return paths


# --- one configuration (child process) --------------------------------------------------------


def run_one(
    config: Config, workload: Workload, base_model: Path, profile: bool
) -> dict[str, object]:
    """Start the engine, warm it up (adapters loaded), serve the workload; return its figures."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    adapters = ensure_adapters(base_model)
    lora_kwargs: dict[str, object] = (
        {"enable_lora": True, "max_loras": MAX_LORAS, "max_lora_rank": 16}
        if config.enable_lora
        else {}
    )
    llm = LLM(
        model=str(base_model),
        dtype="bfloat16",
        max_model_len=1024,
        max_num_seqs=max(workload.requests, 8),
        seed=0,
        **lora_kwargs,
    )

    def lora_for(i: int) -> LoRARequest | None:
        if config.kind is None:
            return None
        k = i % config.num_adapters
        return LoRARequest(f"{config.kind}-{k}", 1 + k, str(adapters[config.kind][k]))

    texts = prompts(workload.requests)
    # warm-up: every adapter of the run loaded into a slot, kernels touched once
    warm = min(workload.requests, max(config.num_adapters, 2))
    llm.generate(
        texts[:warm],
        SamplingParams(max_tokens=2, temperature=0.0),
        lora_request=[lora_for(i) for i in range(warm)],
        use_tqdm=False,
    )

    params = SamplingParams(max_tokens=workload.max_tokens, temperature=0.0, ignore_eos=True)
    engine = llm.llm_engine
    profiler = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        profiler = torch_profile(activities=[ProfilerActivity.CPU])
        profiler.__enter__()
    start = time.perf_counter()
    for i, text in enumerate(texts):
        engine.add_request(str(i), text, params, lora_request=lora_for(i))
    generated: dict[str, int] = {}
    cut = False
    while engine.has_unfinished_requests():
        for output in engine.step():
            generated[output.request_id] = len(output.outputs[0].token_ids)
        if time.perf_counter() - start > workload.max_seconds:
            cut = True
            break
    elapsed = time.perf_counter() - start
    if profiler is not None:
        profiler.__exit__(None, None, None)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    tokens = sum(generated.values())
    return {
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "cut": cut,
    }


def child_main(args: argparse.Namespace) -> None:
    config = Config(**json.loads(args.run_one))
    workload = Workload(**json.loads(args.workload))
    result = run_one(config, workload, Path(args.base_model), args.profile)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --- the whole table (parent process) ---------------------------------------------------------


def run_in_subprocess(
    config: Config, workload: Workload, base_model: Path, profile: bool
) -> dict[str, object]:
    env = dict(os.environ)
    env["HOTSWAP_FAST_CPU_LORA"] = "1" if config.fast else "0"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if profile:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process, profiled
    command = [
        sys.executable,
        __file__,
        "--run-one",
        json.dumps(asdict(config)),
        "--workload",
        json.dumps(asdict(workload)),
        "--base-model",
        str(base_model),
    ] + (["--profile"] if profile else [])
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    logs = proc.stdout + proc.stderr
    if profile:
        print(proc.stdout.split(RESULT_PREFIX)[0])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, object] = json.loads(line[len(RESULT_PREFIX) :])
            break
    else:
        raise RuntimeError(f"{config.name}: the engine run failed:\n{logs[-4000:]}")
    for wrapper in ("SegmentedPunicaWrapperCPU", "PunicaWrapperCPU"):
        if f"Using {wrapper}" in logs:
            result["wrapper"] = wrapper
            break
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="64 requests x 128 new tokens")
    parser.add_argument("--requests", type=int, default=None, help="default 32 (64 with --long)")
    parser.add_argument("--max-tokens", type=int, default=None, help="default 64 (128 --long)")
    parser.add_argument("--max-seconds", type=float, default=None, help="cut a run after this")
    parser.add_argument("--only", action="append", default=[], help="configurations to run")
    parser.add_argument("--profile", action="store_true", help="profile each engine")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--base-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        child_main(args)
        return

    from server.base_model import prepare_default_base_model

    workload = Workload(
        requests=args.requests or (64 if args.long else 32),
        max_tokens=args.max_tokens or (128 if args.long else 64),
        max_seconds=args.max_seconds or (300.0 if args.long else 45.0),
    )
    base_model = prepare_default_base_model(HOME)
    ensure_adapters(base_model)
    selected = [c for c in configs() if not args.only or any(o in c.name for o in args.only)]
    print(
        f"{workload.requests} requests x {workload.max_tokens} new tokens, greedy, ignore_eos; "
        f"bf16; max_loras={MAX_LORAS}; runs cut after {workload.max_seconds:.0f} s"
    )
    results: dict[str, dict[str, object]] = {}
    for config in selected:
        results[config.name] = run_in_subprocess(config, workload, base_model, args.profile)
        print(f"  {config.name}: {results[config.name]}", flush=True)

    base = results.get(configs()[0].name)
    base_tps = float(base["tokens_per_s"]) if base else None  # type: ignore[arg-type]
    print("\n| configuration | tokens/s | × base |\n|---|---:|---:|")
    for name, result in results.items():
        tps = float(result["tokens_per_s"])  # type: ignore[arg-type]
        ratio = f"{tps / base_tps:.2f}" if base_tps else "-"
        mark = " (cut)" if result["cut"] else ""
        print(f"| {name} | {tps:.1f}{mark} | {ratio} |")
    if args.json:
        args.json.write_text(
            json.dumps({"workload": asdict(workload), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
