"""The LoRA entry points as torch custom ops, so that a compiled model calls them opaquely.

vLLM's CPU platform compiles the model once (dynamo trace, inductor) and drops the guards: any
Python decision taken while tracing is frozen into the graph. The segment plan of a step is such
a decision, so the compiled graph must not trace into `server.lora_cpu.ops`: inside a trace the
wrapper calls `torch.ops.hotswap.lora_linear` / `lora_embedding` instead, which inductor keeps as
calls back into Python, where the wrapper applies the current step's plan. Outside a trace
(`torch.compile` off) the wrapper calls its methods directly, without the dispatcher.

The ops find their wrapper by the integer id it got from `register_wrapper` (a constant in the
graph; one wrapper per model runner).
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import torch
from torch.library import Library
from vllm.utils.torch_utils import direct_register_custom_op

if TYPE_CHECKING:
    from server.lora_cpu.punica import SegmentedPunicaWrapperCPU

_LIBRARY = Library("hotswap", "FRAGMENT")
_IDS = itertools.count()


_WRAPPERS: weakref.WeakValueDictionary[int, SegmentedPunicaWrapperCPU] = (
    weakref.WeakValueDictionary()
)


def register_wrapper(wrapper: SegmentedPunicaWrapperCPU) -> int:
    """The id the custom ops take to reach `wrapper` (held weakly)."""
    wrapper_id = next(_IDS)
    _WRAPPERS[wrapper_id] = wrapper
    return wrapper_id


def _wrapper(wrapper_id: int) -> SegmentedPunicaWrapperCPU:
    wrapper = _WRAPPERS.get(wrapper_id)
    if wrapper is None:
        raise RuntimeError(f"hotswap LoRA op called for a freed punica wrapper ({wrapper_id})")
    return wrapper


def _lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: list[torch.Tensor],
    lora_b_stacked: list[torch.Tensor],
    scale: float,
    output_slices: list[int],
    wrapper_id: int,
) -> None:
    _wrapper(wrapper_id).apply_lora_linear(
        y, x, tuple(lora_a_stacked), tuple(lora_b_stacked), scale, tuple(output_slices)
    )


def _lora_embedding(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    add_inputs: bool,
    wrapper_id: int,
) -> None:
    _wrapper(wrapper_id).apply_lora_embedding(y, x, lora_b_stacked, add_inputs)


def _mutates_only(*args: object) -> None:
    """The ops' fake (tracing) implementation: they return nothing and only write `y`."""
    return None


direct_register_custom_op(
    "lora_linear",
    _lora_linear,
    mutates_args=["y"],
    fake_impl=_mutates_only,
    target_lib=_LIBRARY,
    dispatch_key="CPU",
)
direct_register_custom_op(
    "lora_embedding",
    _lora_embedding,
    mutates_args=["y"],
    fake_impl=_mutates_only,
    target_lib=_LIBRARY,
    dispatch_key="CPU",
)
