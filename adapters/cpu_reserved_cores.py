"""How many cores vLLM's CPU worker keeps from the model's threads, for the server's engine and
training's evaluation engine alike.

vLLM keeps one core per worker for its other processes (`VLLM_CPU_NUM_OF_RESERVED_CPU`),
because its engine core busy-waits through every model step. On a machine of a few cores that
is a large share of the compute: on 2 cores it halves the model's threads, and giving the model
both serves 1.34x the tokens, busy-wait and all (`loadtests/bench_served.py`,
`docs/benchmarks.md`).
"""

from __future__ import annotations

import os

RESERVED_CPU_VAR = "VLLM_CPU_NUM_OF_RESERVED_CPU"

FEW_CORES = 4
"""Up to this many CPU cores, an engine keeps none from the model's threads by default."""


def default_reserved_cpu_cores() -> int | None:
    """0 (none reserved) on a machine of up to `FEW_CORES` cores (those this process may run
    on), else None: vLLM's own choice, one per worker."""
    return 0 if len(os.sched_getaffinity(0)) <= FEW_CORES else None


def export_reserved_cores(configured: int | None) -> None:
    """Before an engine starts (its spawned processes read the environment): `configured`
    when set, else the machine's default unless the operator set vLLM's own variable."""
    if configured is not None:
        os.environ[RESERVED_CPU_VAR] = str(configured)
    elif (default := default_reserved_cpu_cores()) is not None:
        os.environ.setdefault(RESERVED_CPU_VAR, str(default))
