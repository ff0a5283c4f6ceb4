"""Cost of the CPU LoRA ops per model step, against the base model's linear layers alone.

    .venv/bin/python loadtests/bench_lora_ops.py                       # the ops in the tree
    .venv/bin/python loadtests/bench_lora_ops.py --baseline-ops OLD.py # and another ops.py

One decode step (32 rows, one token per sequence, round-robin over 8 adapters) and one prefill
step (8 prompts of 42 tokens, one adapter each) through the 30 layers of the default base model
(SmolLM2-135M: hidden 576, intermediate 1536, q 576, k and v 192 each): per layer the four
linear layers as the base model runs them (`torch.nn.functional.linear` on bfloat16 weights:
qkv, o, gate-up, down), and the same plus one LoRA call after each, as vLLM's LoRA layers call
`add_lora_linear`. Two adapter sets: rank 16 on every linear layer, and rank 8 on q and v (the
other layers' LoRA stacks then stay all zero, as vLLM leaves them). The inputs are random; only
the shapes matter.

The machine is shared and busy, so every measurement is the calling thread's CPU time
(`time.thread_time`, torch limited to one thread), the variants run interleaved within each
repeat, and the figures are medians over the repeats: the ratio (base + LoRA) / base and the
LoRA ops' µs per step (median of the per-repeat differences). `--baseline-ops` loads another
version of `server/lora_cpu/ops.py` (e.g. `git show REV:server/lora_cpu/ops.py > /tmp/old.py`)
and measures it in the same repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from torch.nn.functional import linear

from server.lora_cpu import ops as current_ops

LAYERS = 30
HIDDEN = 576
INTERMEDIATE = 1536
Q_SIZE = 576
KV_SIZE = 192
SLOTS = 8
DECODE_ROWS = 32
PREFILL_PROMPTS, PREFILL_LENGTH = 8, 42
DTYPE = torch.bfloat16

# LoRA slices of each layer as vLLM stacks them: (input size, output size of each slice)
LAYER_SHAPES = {
    "qkv": (HIDDEN, (Q_SIZE, KV_SIZE, KV_SIZE)),
    "o": (Q_SIZE, (HIDDEN,)),
    "gate_up": (HIDDEN, (INTERMEDIATE, INTERMEDIATE)),
    "down": (INTERMEDIATE, (HIDDEN,)),
}
# Which slices each adapter set targets, per layer; the others stay all zero.
ADAPTER_SETS: dict[str, tuple[int, dict[str, tuple[bool, ...]]]] = {
    "r16 all linear": (
        16,
        {"qkv": (True, True, True), "o": (True,), "gate_up": (True, True), "down": (True,)},
    ),
    "r8 q,v": (
        8,
        {"qkv": (True, False, True), "o": (False,), "gate_up": (False, False), "down": (False,)},
    ),
}


@dataclass
class LayerLora:
    """One linear layer's LoRA stacks, in vLLM's layout: A `(slots, 1, rank, in)`, B
    `(slots, 1, out, rank)` per slice."""

    lora_a: tuple[torch.Tensor, ...]
    lora_b: tuple[torch.Tensor, ...]
    outs: tuple[int, ...]


@dataclass
class Model:
    """Base weights `(out, in)` per layer kind and the LoRA stacks of every layer."""

    base: dict[str, torch.Tensor]
    lora: list[dict[str, LayerLora]]


def load_ops(path: Path) -> ModuleType:
    """An ops module loaded from a file (another version of `server/lora_cpu/ops.py`)."""
    spec = importlib.util.spec_from_file_location(f"bench_ops_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def build_model(rank: int, targets: dict[str, tuple[bool, ...]], g: torch.Generator) -> Model:
    base = {
        kind: (torch.randn(sum(outs), fan_in, generator=g) / fan_in**0.5).to(DTYPE)
        for kind, (fan_in, outs) in LAYER_SHAPES.items()
    }
    lora = []
    for _ in range(LAYERS):
        layer = {}
        for kind, (fan_in, outs) in LAYER_SHAPES.items():
            a_stacks, b_stacks = [], []
            for out, targeted in zip(outs, targets[kind], strict=True):
                a = torch.zeros(SLOTS, 1, rank, fan_in, dtype=DTYPE)
                b = torch.zeros(SLOTS, 1, out, rank, dtype=DTYPE)
                if targeted:
                    a.copy_(torch.randn(a.shape, generator=g) / fan_in**0.5)
                    b.copy_(torch.randn(b.shape, generator=g) * 0.01)
                a_stacks.append(a)
                b_stacks.append(b)
            layer[kind] = LayerLora(tuple(a_stacks), tuple(b_stacks), outs)
        lora.append(layer)
    return Model(base, lora)


def run_step(
    model: Model, x: torch.Tensor, h: torch.Tensor, lora: Callable[..., None] | None
) -> None:
    """The base linear layers of every layer, each followed by its LoRA call when `lora`."""
    inputs = {"qkv": x, "o": x, "gate_up": x, "down": h}
    for layer in model.lora:
        for kind, weight in model.base.items():
            y = linear(inputs[kind], weight)
            if lora is not None:
                stacks = layer[kind]
                lora(y, inputs[kind], stacks.lora_a, stacks.lora_b, 1.0, stacks.outs)


def lora_caller(module: ModuleType, indices: torch.Tensor) -> Callable[..., None]:
    """`module.lora_linear` bound to one plan and one state, as the punica wrapper calls it."""
    plan = module.plan_segments(indices)
    state = module.LoraState()

    def call(y: torch.Tensor, x: torch.Tensor, *args: object) -> None:
        module.lora_linear(y, x, *args, plan, state=state)

    return call


def measure(
    model: Model, indices: torch.Tensor, variants: dict[str, ModuleType], repeats: int
) -> dict[str, list[float]]:
    """CPU seconds of one step per variant ("base" and one per ops module), per repeat."""
    g = torch.Generator().manual_seed(1)
    rows = indices.shape[0]
    x = torch.randn(rows, HIDDEN, generator=g).to(DTYPE)
    h = torch.randn(rows, INTERMEDIATE, generator=g).to(DTYPE)
    steps: dict[str, Callable[[], None]] = {"base": partial(run_step, model, x, h, None)}
    for name, module in variants.items():
        steps[name] = partial(run_step, model, x, h, lora_caller(module, indices))
    for step in steps.values():  # warm up: weight caches, scratch buffers
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.thread_time()
            step()
            times[name].append(time.thread_time() - start)
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    base = times["base"]
    base_median = statistics.median(base)
    print(f"  {label}: base {base_median * 1e3:.1f} ms/step")
    for name, values in times.items():
        if name == "base":
            continue
        ratio = statistics.median(values) / base_median
        extra = statistics.median(v - b for v, b in zip(values, base, strict=True))
        print(f"    {name:<10} ratio {ratio:.3f}   LoRA ops {extra * 1e6:8.0f} µs/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--baseline-ops", type=Path, help="another ops.py to measure alongside")
    parser.add_argument("--only", choices=sorted(ADAPTER_SETS), help="one adapter set only")
    args = parser.parse_args()

    torch.set_num_threads(1)
    variants: dict[str, ModuleType] = {"current": current_ops}
    if args.baseline_ops is not None:
        variants = {"baseline": load_ops(args.baseline_ops), **variants}
    decode = torch.arange(DECODE_ROWS) % SLOTS
    prefill = torch.arange(PREFILL_PROMPTS).repeat_interleave(PREFILL_LENGTH) % SLOTS
    g = torch.Generator().manual_seed(0)
    for set_name, (rank, targets) in ADAPTER_SETS.items():
        if args.only is not None and set_name != args.only:
            continue
        model = build_model(rank, targets, g)
        print(f"{set_name} (8 adapters, {LAYERS} layers, {args.repeats} repeats, medians)")
        report(f"decode {DECODE_ROWS} rows", measure(model, decode, variants, args.repeats))
        prefill_repeats = max(3, args.repeats // 3)
        report(
            f"prefill {PREFILL_PROMPTS}x{PREFILL_LENGTH} rows",
            measure(model, prefill, variants, prefill_repeats),
        )


if __name__ == "__main__":
    main()
