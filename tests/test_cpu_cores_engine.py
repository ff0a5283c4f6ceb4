"""Served on CPU, the model's threads run on every core of a small machine: vLLM's worker
keeps one core for the other processes unless told otherwise, and hotswap tells it so on up to
`FEW_CORES` cores (`Settings.cpu_reserved_cores`), where that core serves 1.3-1.4x the tokens
(`loadtests/bench_served.py`). On a larger machine vLLM's own reservation stays."""

from __future__ import annotations

import os

import psutil
import pytest

from adapters.cpu_reserved_cores import FEW_CORES
from tests.support.server import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.cpu_only]


def _threads_cpus(process: psutil.Process) -> set[int]:
    """The cores any thread of `process` may run on (OpenMP binds each thread to one)."""
    cpus: set[int] = set()
    for thread in process.threads():
        try:
            cpus |= set(psutil.Process(thread.id).cpu_affinity())
        except psutil.NoSuchProcess:  # a thread that ended meanwhile
            continue
    return cpus


def test_the_model_threads_cover_the_machine_it_may_use(server: RunningServer) -> None:
    children = psutil.Process(server.process.pid).children(recursive=True)
    workers = [p for p in children if p.name().startswith("VLLM::Worker")]
    assert len(workers) == 1, [p.name() for p in children]
    allowed = os.sched_getaffinity(0)
    used = _threads_cpus(workers[0])
    if len(allowed) <= FEW_CORES:
        assert used == allowed
    else:
        assert used < allowed  # vLLM's own reservation
