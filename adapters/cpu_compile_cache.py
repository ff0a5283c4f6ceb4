"""Which compile cache a CPU engine uses, so that a restart does not compile the model again.

vLLM's CPU platform compiles the model with torch's own `inductor` backend
(`CompilationMode.DYNAMO_TRACE_ONCE`). vLLM 0.32 also saves that compiled function as an AOT
artifact (`VLLM_USE_AOT_COMPILE`, on by default from torch 2.10), but its loader calls
`finalize_loading`, a method only its own backend's functions have, on what it loads: on CPU
every load fails (`'function' object has no attribute 'finalize_loading'`, logged as
"Compiling model again due to a load failure") and every engine start traces and compiles the
model again. Without the AOT artifact, torch's own on-disk caches (dynamo, AOT autograd,
inductor's FX graph cache) serve the next start: the default engine's start on 2 cores took
20 s of vLLM's init instead of 74 s (`docs/benchmarks.md`, "Engine start"). GPUs compile with
vLLM's own backend, whose artifacts load, and are left alone.
"""

from __future__ import annotations

import os

AOT_COMPILE_VAR = "VLLM_USE_AOT_COMPILE"


def export_cpu_compile_cache(on_cpu: bool) -> None:
    """On CPU, turn vLLM's AOT artifact off (unless the operator set it) before an engine
    starts: its spawned processes read the variable from the environment."""
    if on_cpu:
        os.environ.setdefault(AOT_COMPILE_VAR, "0")
