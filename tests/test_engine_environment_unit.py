"""What the engine's spawned processes read from the environment (`Engine` exports it before
the engine starts): the CPU cores vLLM's worker leaves to the other processes, and the compile
cache a CPU engine uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapters.cpu_compile_cache import AOT_COMPILE_VAR, export_cpu_compile_cache
from adapters.cpu_reserved_cores import RESERVED_CPU_VAR, export_reserved_cores
from server.base_model import BaseModel
from server.engine import Engine
from server.settings import Settings

RESERVED = RESERVED_CPU_VAR
EXPORTED = (
    RESERVED,
    "VLLM_CPU_KVCACHE_SPACE",
    "HOTSWAP_FAST_CPU_LORA",
    "HOTSWAP_GRAMMAR_CACHE_MB",
    "VLLM_REGEX_COMPILATION_TIMEOUT_S",
    AOT_COMPILE_VAR,
)
BASE = BaseModel(name="base", path=Path("unused"), fingerprint="unused")


def _export(
    monkeypatch: pytest.MonkeyPatch, cpus: int, configured: int | None, inherited: str | None
) -> str | None:
    for name in EXPORTED:  # put back as they were after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    if inherited is not None:
        monkeypatch.setenv(RESERVED, inherited)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    Engine(Settings(cpu_reserved_cores=configured), BASE)._export_engine_environment()
    return os.environ.get(RESERVED)


@pytest.mark.parametrize(
    ("cpus", "configured", "inherited", "exported"),
    [
        (2, None, None, "0"),  # few cores: the model gets them all
        (4, None, None, "0"),
        (16, None, None, None),  # many: vLLM's own reservation
        (2, None, "1", "1"),  # vLLM's own variable, set by the operator, wins over the default
        (2, 1, "0", "1"),  # hotswap's setting, set, wins over everything
        (16, 2, None, "2"),
    ],
)
def test_the_reserved_cores_follow_the_setting_else_the_machine(
    monkeypatch: pytest.MonkeyPatch,
    cpus: int,
    configured: int | None,
    inherited: str | None,
    exported: str | None,
) -> None:
    assert _export(monkeypatch, cpus, configured, inherited) == exported


@pytest.mark.parametrize(
    ("on_cpu", "inherited", "exported"),
    [
        (True, None, "0"),  # vLLM 0.32 cannot load its CPU AOT artifact: torch's caches instead
        (True, "1", "1"),  # the operator's choice wins
        (False, None, None),  # GPUs compile with vLLM's backend, whose artifacts load
    ],
)
def test_a_cpu_engine_uses_torchs_compile_caches_not_vllms_aot_artifact(
    monkeypatch: pytest.MonkeyPatch, on_cpu: bool, inherited: str | None, exported: str | None
) -> None:
    monkeypatch.delenv(AOT_COMPILE_VAR, raising=False)
    if inherited is not None:
        monkeypatch.setenv(AOT_COMPILE_VAR, inherited)
    export_cpu_compile_cache(on_cpu)
    assert os.environ.get(AOT_COMPILE_VAR) == exported


def test_the_engine_exports_the_compile_cache_setting_on_this_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.platforms import current_platform

    _export(monkeypatch, cpus=2, configured=None, inherited=None)
    assert os.environ.get(AOT_COMPILE_VAR) == ("0" if current_platform.is_cpu() else None)


@pytest.mark.parametrize(("cpus", "exported"), [(2, "0"), (16, None)])
def test_the_evaluation_engine_gets_the_machines_default(
    monkeypatch: pytest.MonkeyPatch, cpus: int, exported: str | None
) -> None:
    """training's evaluation engine passes no setting: the machine's default applies."""
    monkeypatch.delenv(RESERVED, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    export_reserved_cores(None)
    assert os.environ.get(RESERVED) == exported
