"""The weights dtype a CPU engine runs by default: bfloat16 where the CPU multiplies it natively,
float32 where it does not.

vLLM's CPU linear layers hand bfloat16 products to oneDNN, which needs AVX512-BF16 or AMX on x86.
Without them (AVX2 machines: most laptops, AMD EPYC servers before Zen 4) oneDNN refuses the
primitive, vLLM falls back to torch's bfloat16 product, and that runs at about 1 G multiply-adds
per second on 2 cores, against 80-90 G in float32 (`docs/benchmarks.md`, "The weights dtype on
a CPU without bfloat16"). Shared by the server (`HOTSWAP_DTYPE=auto`) and training's evaluation
engine, so that both run what the machine computes fast.
"""

from __future__ import annotations

import functools
import platform
from typing import Literal

CpuDtype = Literal["bfloat16", "float32"]

X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})


@functools.cache
def native_bf16_matmul() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (x86: AVX512-BF16 or AMX tiles).

    Other architectures answer True: vLLM's CPU platform declares bfloat16 there, and no
    machine of theirs was measured here."""
    if platform.machine().lower() not in X86_MACHINES:
        return True
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_cpu_dtype() -> CpuDtype:
    """bfloat16 where the CPU multiplies it natively (half the memory and bytes per token),
    float32 elsewhere."""
    return "bfloat16" if native_bf16_matmul() else "float32"


def engine_dtype(requested: str, on_cpu: bool) -> str:
    """The dtype to give vLLM: `requested` unless it is `auto`; `auto` means
    `default_cpu_dtype()` on CPU and the model's own dtype (vLLM's `auto`) elsewhere."""
    if requested != "auto":
        return requested
    return default_cpu_dtype() if on_cpu else "auto"
