"""The CPU LoRA ops under `torch.compile`: opaque custom ops that read each step's plan.

vLLM's CPU platform traces the model once and drops the guards, so a trace must not freeze the
segment plan of the batch it was traced with. These tests compile a function that calls the
wrapper like vLLM's LoRA layers do, run it on batches of other sizes and adapter mixes, and
compare with the eager wrapper; and they check the plugin's compilation switch.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm.lora.layers import LoRAMapping

from server.lora_cpu import plugin
from server.lora_cpu.punica import SegmentedPunicaWrapperCPU

pytestmark = [pytest.mark.cpu_only, pytest.mark.vllm]

HIDDEN = 64
RANK = 8
SLOTS = 4
OUTS = (48, 16, 16)  # a merged qkv layer
# traced with the first, run with all (no second trace allowed): sizes and adapter mixes differ
# from step to step (sizes >= 2: torch specializes a size of 1, vLLM's trace-once mode does not)
STEPS: tuple[list[int], ...] = (
    [0, 0, 0, -1, 2, 2, 1],
    [3, -1, 1, 0, 2, 2, 3, 3, 1, 0, -1, 1],
    [-1, -1, -1],
    [2, 2],
    [1] * 40 + [-1, 0, 3],
)
# inductor writes and compiles C++ for CPU tensors
BACKENDS = ("aot_eager", pytest.param("inductor", marks=pytest.mark.cxx))


def _set_step(wrapper: SegmentedPunicaWrapperCPU, rows: list[int]) -> None:
    """Step metadata as vLLM's model runner sets it (slot i holds adapter id i + 1)."""
    ids = tuple(s + 1 if s >= 0 else 0 for s in rows)
    mapping = LoRAMapping(ids, ids, is_prefill=True)
    wrapper.update_metadata(mapping, [i + 1 for i in range(SLOTS)], SLOTS, 1000)


def _stacks(g: torch.Generator) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    lora_a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) / 8 for _ in OUTS)
    lora_b = tuple(torch.randn(SLOTS, 1, o, RANK, generator=g) for o in OUTS)
    return lora_a, lora_b


def _compiled(fn: Callable[..., torch.Tensor], backend: str) -> Callable[..., torch.Tensor]:
    """`fn` compiled in one graph (no Python left in between) that must never be retraced."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=True)
    traced: list[bool] = []

    def run(*args: torch.Tensor) -> torch.Tensor:
        with torch._dynamo.config.patch(error_on_recompile=bool(traced)):
            result = compiled(*args)
        traced.append(True)
        return result

    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_lora_linear_follows_every_steps_plan(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    lora_a, lora_b = _stacks(g)
    wrapper = SegmentedPunicaWrapperCPU(4096, 256, "cpu")

    def layer(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # what vLLM's `BaseLinearLayerWithLoRA` does: base product, then LoRA added in place
        output = x @ weight
        wrapper.add_lora_linear(output, x, lora_a, lora_b, 1.0, OUTS)
        return output * 2

    compiled = _compiled(layer, backend)
    weight = torch.randn(HIDDEN, sum(OUTS), generator=g)
    for rows in STEPS:
        _set_step(wrapper, rows)
        x = torch.randn(len(rows), HIDDEN, generator=g)
        expected = layer(x, weight)
        actual = compiled(x, weight)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
        if any(s >= 0 for s in rows):  # the adapters did change the output
            assert not torch.allclose(actual, (x @ weight) * 2, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_lora_embedding_follows_every_steps_plan(backend: str) -> None:
    g = torch.Generator().manual_seed(1)
    lora_b = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=g)
    wrapper = SegmentedPunicaWrapperCPU(4096, 256, "cpu")

    def embed(a_rows: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        output = base + 0  # vLLM's embedding output, then the LoRA added in place
        wrapper.add_lora_embedding(output, a_rows, lora_b, add_input=True)
        return output

    compiled = _compiled(embed, backend)
    for rows in STEPS:
        _set_step(wrapper, rows)
        a_rows = torch.randn(len(rows), RANK, generator=g)
        base = torch.randn(len(rows), HIDDEN, generator=g)
        torch.testing.assert_close(compiled(a_rows, base), embed(a_rows, base))


def _fake_platform_check(cls: Any, vllm_config: Any) -> None:
    """Stands for the CPU platform's rule: compile unless LoRA is on."""
    vllm_config.compilation_config.mode = "traced" if vllm_config.lora_config is None else "none"


def _config(lora: Any) -> Any:
    return SimpleNamespace(lora_config=lora, compilation_config=SimpleNamespace(mode="asked"))


@pytest.mark.parametrize(
    ("compile_env", "lora", "mode"),
    [
        (None, SimpleNamespace(fully_sharded_loras=False), "traced"),
        ("1", SimpleNamespace(fully_sharded_loras=False), "traced"),
        ("0", SimpleNamespace(fully_sharded_loras=False), "none"),
        (None, SimpleNamespace(fully_sharded_loras=True), "none"),
        (None, None, "traced"),
    ],
)
def test_plugin_keeps_the_platforms_compilation_for_lora(
    monkeypatch: pytest.MonkeyPatch, compile_env: str | None, lora: Any, mode: str
) -> None:
    _register_on_fake_platform(monkeypatch, compile_env)
    config = _config(lora)
    _platform().check_and_update_config(config)
    assert config.compilation_config.mode == mode
    assert config.lora_config is lora  # put back after asking the platform


def test_plugin_leaves_compilation_off_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    _register_on_fake_platform(monkeypatch, None)
    monkeypatch.setattr(plugin.shutil, "which", lambda name: None)
    config = _config(SimpleNamespace(fully_sharded_loras=False))
    _platform().check_and_update_config(config)
    assert config.compilation_config.mode == "none"


def _platform() -> Any:
    from vllm.platforms import current_platform

    return current_platform


def _register_on_fake_platform(monkeypatch: pytest.MonkeyPatch, compile_env: str | None) -> None:
    """`plugin.register()` over a stand-in for the platform's rule. Every attribute the plugin
    writes is first set through monkeypatch, so the class is exactly as before when the test
    ends (an attribute absent before is deleted again): later engines in this process must see
    vLLM's own method, not the stand-in."""
    platform_cls = type(_platform())
    fake = classmethod(_fake_platform_check)
    monkeypatch.setattr(platform_cls, "check_and_update_config", fake)
    monkeypatch.setattr(platform_cls, plugin._ORIGINAL_CHECK, fake, raising=False)
    punica = platform_cls.__dict__["get_punica_wrapper"]
    monkeypatch.setattr(platform_cls, "get_punica_wrapper", punica)
    monkeypatch.setattr(platform_cls, plugin._ORIGINAL, punica, raising=False)
    monkeypatch.setattr(platform_cls, plugin._MARKER, False, raising=False)
    monkeypatch.setenv(plugin.ENV_VAR, "1")
    if compile_env is None:
        monkeypatch.delenv(plugin.COMPILE_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(plugin.COMPILE_ENV_VAR, compile_env)
    plugin.register()
