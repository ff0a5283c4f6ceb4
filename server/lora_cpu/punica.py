"""A vLLM punica wrapper for CPU that runs the segment-grouped ops of `server.lora_cpu.ops`.

vLLM asks the platform for a punica wrapper class (`Platform.get_punica_wrapper`) and routes every
LoRA layer through it: `add_lora_linear` (every linear layer: qkv, o, gate-up, down),
`add_shrink` + `add_expand` (the fully sharded variants, `fully_sharded_loras=True`),
`add_lora_embedding` and `add_lora_logits`. This class keeps vLLM's metadata handling (it
subclasses `PunicaWrapperCPU`, whose `apply_lora_full_linear` and MoE entry points it inherits)
and adds one `SegmentPlan` per step, built in `update_metadata`, which every layer of the step
reuses, plus the float32 weight copies and scratch buffers the operations keep between calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from server.lora_cpu import graph_ops, ops

if TYPE_CHECKING:
    from vllm.lora.layers import LoRAMapping

_EMPTY_PLAN = ops.plan_segments(torch.empty(0, dtype=torch.long))


class SegmentedPunicaWrapperCPU(PunicaWrapperCPU):
    """`PunicaWrapperCPU` with LoRA products grouped by adapter, base-model rows skipped."""

    def __init__(
        self,
        max_num_batched_tokens: int,
        max_batches: int,
        device: torch.device | str,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        self._token_plan: ops.SegmentPlan = _EMPTY_PLAN
        self._sampler_plan: ops.SegmentPlan | None = None
        self._state = ops.LoraState()
        self._graph_id = graph_ops.register_wrapper(self)

    def update_metadata(
        self,
        mapping: LoRAMapping,
        lora_index_to_id: list[int | None],
        max_loras: int,
        vocab_size: int,
        **kwargs: Any,
    ) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self._state.weights.note_slots(lora_index_to_id)
        self._token_plan = ops.plan_segments(self.token_lora_indices)
        self._sampler_plan = None

    @property
    def token_plan(self) -> ops.SegmentPlan:
        """The tokens of the current step grouped by adapter slot."""
        return self._token_plan

    @property
    def sampler_plan(self) -> ops.SegmentPlan:
        """The logits rows of the current step grouped by adapter slot (built on first use)."""
        if self._sampler_plan is None:
            self._sampler_plan = ops.plan_segments(self.sampler_indices)
        return self._sampler_plan

    def add_shrink(
        self,
        y: tuple[torch.Tensor, ...] | torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        scale: float,
        **kwargs: Any,
    ) -> None:
        """`y[k] += scale * x @ lora_a_stacked[k]` per slice, adapter rows only."""
        plan = self._token_plan
        if plan.empty:
            return
        x = x.view(-1, x.shape[-1])
        for k, lora_a in enumerate(lora_a_stacked):
            y_k = y[k]
            ops.lora_shrink(y_k.view(-1, y_k.shape[-1]), x, lora_a, plan, scale, state=self._state)

    def add_expand(
        self,
        y: torch.Tensor,
        x: tuple[torch.Tensor, ...] | torch.Tensor,
        lora_b_stacked: tuple[torch.Tensor, ...],
        output_slices: tuple[int, ...],
        offset_start: int = 0,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        """`y[:, o_k : o_k + output_slices[k]] += x[k] @ lora_b_stacked[k]`, adapter rows only."""
        plan = self._token_plan
        if plan.empty:
            return
        y2 = y.view(-1, y.shape[-1])
        offset = offset_start
        for k, (lora_b, size) in enumerate(zip(lora_b_stacked, output_slices, strict=True)):
            x_k = x[k]
            x_k = x_k.view(-1, x_k.shape[-1])
            ops.lora_expand(y2, x_k, lora_b, plan, offset, size, add_inputs, state=self._state)
            offset += size

    def add_lora_embedding(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        """`y += x @ lora_b_stacked` for the embedding layer (its A was applied by lookup)."""
        if torch.compiler.is_compiling():
            torch.ops.hotswap.lora_embedding(y, x, lora_b_stacked, add_inputs, self._graph_id)
        else:
            self.apply_lora_embedding(y, x, lora_b_stacked, add_inputs)

    def apply_lora_embedding(
        self, y: torch.Tensor, x: torch.Tensor, lora_b_stacked: torch.Tensor, add_inputs: bool
    ) -> None:
        """`add_lora_embedding` for the current step (what the custom op runs)."""
        ops.lora_expand(
            y, x, lora_b_stacked, self._token_plan, 0, None, add_inputs, state=self._state
        )

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        """The whole LoRA of a linear layer in one call; `buffer` is not needed and not used.

        Inside a `torch.compile` trace this is one opaque custom op (registered by `graph_ops`),
        so the step's segment plan is read when the graph runs, not frozen when it was traced.
        """
        if torch.compiler.is_compiling():
            torch.ops.hotswap.lora_linear(
                y,
                x,
                list(lora_a_stacked),
                list(lora_b_stacked),
                scale,
                list(output_slices),
                self._graph_id,
            )
        else:
            self.apply_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices)

    def apply_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
    ) -> None:
        """`add_lora_linear` for the current step (what the custom op runs)."""
        ops.lora_linear(
            y.view(-1, y.shape[-1]),
            x.view(-1, x.shape[-1]),
            lora_a_stacked,
            lora_b_stacked,
            scale,
            output_slices,
            self._token_plan,
            state=self._state,
        )

    def add_lora_logits(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        scale: float,
        *,
        buffer: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        """The lm_head LoRA added to the logits `y`, rows mapped by the sampler indices."""
        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])
        size = min(lora_b_stacked.shape[-2], y2.shape[-1])
        plan = self.sampler_plan
        if plan.num_rows != x2.shape[0]:
            # Logits of rows the step's sampler mapping does not describe: vLLM computes prompt
            # log-probs one request at a time through this layer. Nothing to add unless an
            # adapter in a slot has an lm_head LoRA, in which case the rows' adapter is unknown.
            if not self._state.weights.expand_weights(lora_b_stacked, size).any_nonzero(
                0, range(lora_b_stacked.shape[0])
            ):
                return
            raise NotImplementedError(
                "Prompt log-probs with an adapter that targets lm_head are not supported by "
                "the CPU LoRA ops; drop prompt_logprobs or lm_head from the adapter."
            )
        ops.lora_linear(
            y2, x2, (lora_a_stacked,), (lora_b_stacked,), scale, (size,), plan, state=self._state
        )
