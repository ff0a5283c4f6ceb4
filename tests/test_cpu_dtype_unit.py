"""The weights dtype `auto` gives a CPU engine: bfloat16 only where the CPU multiplies it
natively (x86: AVX512-BF16 or AMX), float32 elsewhere; an explicit dtype always wins."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

import pytest
import torch

from adapters import cpu_dtype
from server.engine import resolve_dtype
from server.settings import Settings

SetCpu = Callable[[str, bool, bool], None]


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[SetCpu]:
    """Set the machine and its x86 bfloat16 instructions: `cpu(machine, avx512_bf16, amx)`."""

    def set_cpu(machine: str, avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        cpu_dtype.native_bf16_matmul.cache_clear()

    yield set_cpu
    cpu_dtype.native_bf16_matmul.cache_clear()


@pytest.mark.parametrize(
    ("machine", "avx512_bf16", "amx", "expected"),
    [
        ("x86_64", False, False, "float32"),  # AVX2 only: oneDNN refuses bfloat16 products
        ("x86_64", True, False, "bfloat16"),
        ("x86_64", False, True, "bfloat16"),
        ("AMD64", False, False, "float32"),  # Windows spells it so
        ("aarch64", False, False, "bfloat16"),  # vLLM's own default there, unmeasured here
    ],
)
def test_auto_on_cpu_is_bfloat16_only_with_native_bfloat16(
    cpu: SetCpu, machine: str, avx512_bf16: bool, amx: bool, expected: str
) -> None:
    cpu(machine, avx512_bf16, amx)
    assert cpu_dtype.default_cpu_dtype() == expected
    assert resolve_dtype(Settings(dtype="auto"), on_cuda=False) == expected
    assert cpu_dtype.engine_dtype("auto", on_cpu=True) == expected  # training's evaluation


def test_an_explicit_dtype_wins_and_gpus_keep_the_models_own(cpu: SetCpu) -> None:
    cpu("x86_64", False, False)
    assert resolve_dtype(Settings(dtype="bfloat16"), on_cuda=False) == "bfloat16"
    assert resolve_dtype(Settings(dtype="float32"), on_cuda=True) == "float32"
    assert resolve_dtype(Settings(dtype="auto"), on_cuda=True) == "auto"
    assert cpu_dtype.engine_dtype("auto", on_cpu=False) == "auto"
