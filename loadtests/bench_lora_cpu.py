"""Multi-LoRA throughput on CPU: vLLM's own LoRA ops against hotswap's segment-grouped ones.

    .venv/bin/python loadtests/bench_lora_cpu.py            # a few minutes
    .venv/bin/python loadtests/bench_lora_cpu.py --long     # more requests and tokens
    .venv/bin/python loadtests/bench_lora_cpu.py --only "8 LoRAs r16 all" --profile

Every workload serves the same prompts (greedy, `ignore_eos`, a fixed number of new tokens):
on the base model, on one adapter, and round-robin over eight adapters, with adapters of rank 16
on all linear layers (q,k,v,o,gate,up,down) and of rank 8 on q,v. Four engines, each started
in its own subprocess since the plugin is read at engine start: the base model without LoRA (the
reference), and a LoRA engine (`max_loras=8`) with `HOTSWAP_FAST_CPU_LORA=0` (vLLM's ops, "off";
vLLM runs a LoRA engine uncompiled), with `=1` and `HOTSWAP_CPU_LORA_COMPILE=0` (hotswap's ops,
uncompiled: "on-eager") and with both on (hotswap's ops in the compiled model: "on").
Adapters are random PEFT LoRAs on the real base model, written once under
`~/.cache/hotswap/bench-lora-cpu/`.

Per workload: generated tokens over wall time from the first request to the last token
(prefill included), against the engine without LoRA and, for an adapter workload, against the
mean of the base runs just before and after it on the same engine (every adapter workload runs
between two base runs: other work on a shared machine drifts over minutes, much less between
neighbouring runs). Tokens per CPU second of the engine's processes are in `--json`. A workload
still running after `--max-seconds` is cut there and marked "cut" (vLLM's own ops with adapters
are that slow). `--profile` runs the engines in-process under torch.profiler and prints, per
workload, the operators that cost the most.
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
MAX_BATCHED_TOKENS = 512  # prefill in chunks: a step of vLLM's own ops stays short enough to cut
RESULT_PREFIX = "BENCH-RESULT "


@dataclass(frozen=True)
class Workload:
    """Which adapters the requests use: `kind` (an ADAPTER_KINDS key, None for the base model),
    round-robin over `num_adapters` of them."""

    label: str
    kind: str | None
    num_adapters: int


@dataclass(frozen=True)
class Engine:
    """One engine: LoRA on or off, whose LoRA ops (`fast`: HOTSWAP_FAST_CPU_LORA), and whether
    a LoRA engine keeps torch.compile (`compiled`: HOTSWAP_CPU_LORA_COMPILE, fast ops only)."""

    label: str
    enable_lora: bool
    fast: bool
    compiled: bool = True


@dataclass(frozen=True)
class Size:
    """The requests every workload serves, and when to cut a workload."""

    requests: int
    max_tokens: int
    max_seconds: float


BASE = Workload("base", None, 0)
LORA_WORKLOADS = (
    Workload("1 LoRA r8 q,v", "qv8", 1),
    Workload("8 LoRAs r8 q,v", "qv8", NUM_ADAPTERS),
    Workload("1 LoRA r16 all", "all16", 1),
    Workload("8 LoRAs r16 all", "all16", NUM_ADAPTERS),
)
# On a LoRA engine every adapter workload runs between two base runs, and is compared with their
# mean: other work on the machine drifts over minutes, much less between neighbouring runs.
INTERLEAVED = (BASE, *[w for lora in LORA_WORKLOADS for w in (lora, BASE)])
ENGINES: tuple[tuple[Engine, tuple[Workload, ...]], ...] = (
    (Engine("no LoRA", enable_lora=False, fast=False), (BASE,)),
    (Engine("off", enable_lora=True, fast=False), INTERLEAVED),
    (Engine("on-eager", enable_lora=True, fast=True, compiled=False), INTERLEAVED),
    (Engine("on", enable_lora=True, fast=True), INTERLEAVED),
)


def row_name(engine: Engine, workload: Workload) -> str:
    if not engine.enable_lora:
        return "base, engine without LoRA"
    if workload.kind is None:
        return f"base requests, LoRA engine / {engine.label}"
    return f"{workload.label} / {engine.label}"


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
    """Random LoRAs of every kind, made once (A and B nonzero: outputs visibly change)."""
    paths = {
        kind: [ADAPTER_DIR / f"{kind}-{i}" for i in range(NUM_ADAPTERS)] for kind in ADAPTER_KINDS
    }
    for kind, kind_paths in paths.items():
        if all((p / "adapter_config.json").is_file() for p in kind_paths):
            continue
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        rank, targets = ADAPTER_KINDS[kind]
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        for i, path in enumerate(kind_paths):
            g = torch.Generator().manual_seed(1000 * rank + i)
            for name, param in peft_model.named_parameters():
                if "lora_A" in name:
                    param.data = torch.randn(param.shape, generator=g) / param.shape[1] ** 0.5
                elif "lora_B" in name:
                    param.data = torch.randn(param.shape, generator=g) * 0.02
            peft_model.save_pretrained(path)
    return paths


# --- one engine (child process) --------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time so far of this process and all its descendants (the engine core, its workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_engine(
    engine: Engine, workloads: tuple[Workload, ...], size: Size, base_model: Path, profile: bool
) -> None:
    """Start the engine, then per workload: warm up (adapters loaded), serve, print figures."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from adapters.cpu_dtype import default_cpu_dtype

    adapters = ensure_adapters(base_model)
    lora_kwargs: dict[str, object] = (
        {"enable_lora": True, "max_loras": MAX_LORAS, "max_lora_rank": 16}
        if engine.enable_lora
        else {}
    )
    llm = LLM(
        model=str(base_model),
        dtype=default_cpu_dtype(),
        max_model_len=1024,
        max_num_seqs=max(size.requests, 8),
        max_num_batched_tokens=MAX_BATCHED_TOKENS,
        seed=0,
        **lora_kwargs,
    )
    texts = prompts(size.requests)
    params = SamplingParams(max_tokens=size.max_tokens, temperature=0.0, ignore_eos=True)
    for workload in workloads:

        def lora_for(i: int, workload: Workload = workload) -> LoRARequest | None:
            if workload.kind is None:
                return None
            k = i % workload.num_adapters
            path = adapters[workload.kind][k]
            return LoRARequest(f"{workload.kind}-{k}", 1 + k + 100 * len(workload.kind), str(path))

        warm = min(size.requests, max(workload.num_adapters, 2))
        llm.generate(
            texts[:warm],
            SamplingParams(max_tokens=2, temperature=0.0),
            lora_request=[lora_for(i) for i in range(warm)],
            use_tqdm=False,
        )
        result = _serve(llm, texts, params, lora_for, size.max_seconds, profile)
        result["name"] = row_name(engine, workload)
        print(RESULT_PREFIX + json.dumps(result), flush=True)


def _serve(
    llm: object,
    texts: list[str],
    params: object,
    lora_for: object,
    max_seconds: float,
    profile: bool,
) -> dict[str, object]:
    engine = llm.llm_engine  # type: ignore[attr-defined]
    profiler = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        profiler = torch_profile(activities=[ProfilerActivity.CPU])
        profiler.__enter__()
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    for i, text in enumerate(texts):
        engine.add_request(f"r{start}-{i}", text, params, lora_request=lora_for(i))  # type: ignore[operator]
    generated: dict[str, int] = {}
    cut = False
    while engine.has_unfinished_requests():
        for output in engine.step():
            generated[output.request_id] = len(output.outputs[0].token_ids)
        if time.perf_counter() - start > max_seconds:
            cut = True
            engine.abort_request(list(generated) + [f"r{start}-{i}" for i in range(len(texts))])
            break
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    if profiler is not None:
        profiler.__exit__(None, None, None)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    tokens = sum(generated.values())
    return {
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_cpu_s": round(tokens / cpu, 1) if cpu > 0 else None,
        "cut": cut,
    }


def child_main(args: argparse.Namespace) -> None:
    engine = Engine(**json.loads(args.engine))
    workloads = tuple(Workload(**w) for w in json.loads(args.workloads))
    size = Size(**json.loads(args.size))
    run_engine(engine, workloads, size, Path(args.base_model), args.profile)


# --- the whole table (parent process) ---------------------------------------------------------


def run_in_subprocess(
    engine: Engine,
    workloads: tuple[Workload, ...],
    size: Size,
    base_model: Path,
    profile: bool,
    omp_bind: str | None = None,
    in_process: bool = False,
) -> list[dict[str, object]]:
    env = dict(os.environ)
    env["HOTSWAP_FAST_CPU_LORA"] = "1" if engine.fast else "0"
    env["HOTSWAP_CPU_LORA_COMPILE"] = "1" if engine.compiled else "0"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if omp_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind
    if profile or in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
    command = [
        sys.executable,
        __file__,
        "--engine",
        json.dumps(asdict(engine)),
        "--workloads",
        json.dumps([asdict(w) for w in workloads]),
        "--size",
        json.dumps(asdict(size)),
        "--base-model",
        str(base_model),
    ] + (["--profile"] if profile else [])
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    logs = proc.stdout + proc.stderr
    wrapper = next(
        (w for w in ("SegmentedPunicaWrapperCPU", "PunicaWrapperCPU") if f"Using {w}" in logs),
        None,
    )
    results = []
    for chunk in proc.stdout.split(RESULT_PREFIX)[1:]:
        line, _, _ = chunk.partition("\n")
        result: dict[str, object] = json.loads(line)
        if wrapper:
            result["wrapper"] = wrapper
        results.append(result)
    if profile:
        print(proc.stdout)
    if len(results) != len(workloads):
        raise RuntimeError(f"engine {engine.label!r} failed:\n{logs[-4000:]}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="64 requests x 128 new tokens")
    parser.add_argument("--requests", type=int, default=None, help="default 32 (64 with --long)")
    parser.add_argument("--max-tokens", type=int, default=None, help="default 64 (128 --long)")
    parser.add_argument("--max-seconds", type=float, default=None, help="cut a workload there")
    parser.add_argument("--only", action="append", default=[], help="workload labels to run")
    parser.add_argument(
        "--engines", default="no LoRA,off,on-eager,on", help="labels, comma-separated"
    )
    parser.add_argument("--profile", action="store_true", help="profile every workload")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="engine core in the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0), no "
        "front-end process competing for the cores; default: vLLM's separate engine-core process",
    )
    parser.add_argument(
        "--omp-bind",
        default=None,
        help="VLLM_CPU_OMP_THREADS_BIND for the engines, e.g. 0 for one thread on core 0 "
        "(steadier on a shared machine); default: vLLM's (all cores)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--base-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        child_main(args)
        return

    from adapters.cpu_dtype import default_cpu_dtype
    from server.base_model import prepare_default_base_model

    size = Size(
        requests=args.requests or (64 if args.long else 32),
        max_tokens=args.max_tokens or (128 if args.long else 64),
        max_seconds=args.max_seconds or (300.0 if args.long else 40.0),
    )
    base_model = prepare_default_base_model(HOME)
    ensure_adapters(base_model)
    wanted = set(args.engines.split(","))
    print(
        f"{size.requests} requests x {size.max_tokens} new tokens, greedy, ignore_eos; "
        f"{default_cpu_dtype()}; max_loras={MAX_LORAS}; "
        f"max_num_batched_tokens={MAX_BATCHED_TOKENS}; "
        f"workloads cut after {size.max_seconds:.0f} s; OMP threads bound to "
        f"{args.omp_bind or 'all cores (vLLM default)'}; engine core "
        f"{'in this process' if args.in_process else 'in its own process (vLLM default)'}",
        flush=True,
    )
    results: list[dict[str, object]] = []
    for engine, workloads in ENGINES:
        chosen = tuple(w for w in workloads if not args.only or w.label in args.only)
        while len(chosen) > 1 and chosen[-1] == chosen[-2] == BASE:  # no base run twice in a row
            chosen = chosen[:-1]
        chosen = tuple(
            w for i, w in enumerate(chosen) if i == 0 or w != BASE or chosen[i - 1] != BASE
        )
        if engine.label not in wanted or not chosen:
            continue
        runs = run_in_subprocess(
            engine, chosen, size, base_model, args.profile, args.omp_bind, args.in_process
        )
        for result in runs:
            print(f"  {result}", flush=True)
            results.append(result)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"size": asdict(size), "results": results}, indent=2))


def _is_base(result: dict[str, object]) -> bool:
    return str(result["name"]).startswith("base")


def print_table(results: list[dict[str, object]]) -> None:
    """One row per run: tokens/s, against the engine without LoRA, and for an adapter workload
    against the mean of the base runs on either side of it on the same engine (the steadier
    comparison on a shared machine)."""
    no_lora = next((r for r in results if r["name"] == "base, engine without LoRA"), None)
    print("\n| workload / LoRA ops | tokens/s | × base (no-LoRA engine) | × base (same engine) |")
    print("|---|---:|---:|---:|")
    for i, r in enumerate(results):
        tps = float(r["tokens_per_s"])  # type: ignore[arg-type]
        vs_no_lora = "-"
        if no_lora is not None:
            vs_no_lora = f"{tps / float(no_lora['tokens_per_s']):.2f}"  # type: ignore[arg-type]
        vs_engine = "-"
        if not _is_base(r):
            around = [results[j] for j in (i - 1, i + 1) if 0 <= j < len(results)]
            bases = [float(n["tokens_per_s"]) for n in around if _is_base(n)]  # type: ignore[arg-type]
            if bases:
                vs_engine = f"{tps / (sum(bases) / len(bases)):.2f}"
        cut = " (cut)" if r["cut"] else ""
        print(f"| {r['name']} | {tps:.1f}{cut} | {vs_no_lora} | {vs_engine} |")


if __name__ == "__main__":
    main()
