"""The dense form of a linear layer's multi-LoRA, for decode-sized batches.

A decode step gives each adapter a few rows, and a product over a few rows runs far below the
machine's speed, whatever groups them. The dense form multiplies *every* row by the A of *every*
slot in one matrix product (`(rows, in) @ (in, slots * rank)`), zeroes the columns of the
slots a row does not use (a per-step mask, `scale` where the slot is the row's own, 0 elsewhere:
base-model rows get 0 everywhere), and multiplies the result by the B of every slot stacked
along the rank (`(rows, slots * rank) @ (slots * rank, out)`): the masked columns add nothing,
so each row gets its own adapter's update. That is `slots` times the arithmetic of the grouped
products, but in two large products per slice, which oneDNN runs near the speed of the base
model's own layers, with no gather, scatter or cast.

Products run in the model's dtype through vLLM's own CPU GEMM (`onednn_mm`, weights prepacked
once per weight version, as vLLM's CPU linear layers do), or `torch.mm` where vLLM's build has
no oneDNN or oneDNN does not take the dtype. Slices whose weights are zero in every slot (an
adapter set that does not target them) are left out of the products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _onednn_available() -> bool:
    """Whether vLLM's CPU linear layers would use oneDNN here (its own test, in
    `vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm`)."""
    from vllm import _custom_ops
    from vllm.platforms import CpuArchEnum, current_platform

    return bool(_custom_ops._supports_onednn) and (
        current_platform.get_cpu_architecture() != CpuArchEnum.POWERPC
    )


class Matrix:
    """A `(k, n)` weight that right-multiplies `(rows, k)` inputs, prepacked for oneDNN."""

    def __init__(self, weight: torch.Tensor) -> None:
        from vllm import _custom_ops

        self.columns = weight.shape[1]
        self._handler = None
        self._weight: torch.Tensor | None = weight  # torch's product, where oneDNN's is not
        if weight.dtype in ONEDNN_DTYPES and _onednn_available():
            try:
                self._handler = _custom_ops.create_onednn_mm(weight, 32)
                self._weight = None  # oneDNN keeps its own packed copy
            except RuntimeError:  # a dtype or ISA this oneDNN build refuses
                self._handler = None

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ weight`; `x` may be a column slice of a larger matrix."""
        if self._weight is not None:
            return torch.mm(x, self._weight)
        assert self._handler is not None
        out = torch.empty((x.shape[0], self.columns), dtype=x.dtype)
        torch.ops._C.onednn_mm(out, x, None, self._handler.handler_tensor)
        return out


@dataclass(frozen=True, eq=False)
class DenseSlice:
    """One slice's B of every slot, `(slots * rank, size)`, and where its output goes."""

    expand: Matrix
    y_col: int
    size: int


@dataclass(frozen=True, eq=False)
class DenseLinear:
    """A linear layer's LoRA in the dense form: the A of its kept slices side by side."""

    shrink: Matrix  # (in, kept slices * slots * rank)
    slices: tuple[DenseSlice, ...]
    slots: int
    rank: int
    macs_per_row: int
    """Multiply-adds per row of the two products."""


def build_dense_linear(
    lora_a: Sequence[torch.Tensor],
    lora_b: Sequence[torch.Tensor],
    sizes: Sequence[int],
    y_cols: Sequence[int],
    dtype: torch.dtype,
    rank_use: Sequence[torch.Tensor],
) -> DenseLinear | None:
    """The dense form of a layer's slices; None when every slot's weights are zero.

    `lora_a[k]` is `(slots, rank, in)`, `lora_b[k]` `(slots, out, rank)` (vLLM's stacks without
    their singleton dimension); slice `k` writes `sizes[k]` outputs from column `y_cols[k]`;
    `rank_use[k]` is its `slot_rank_use`. Only the ranks some slot uses are kept (vLLM sizes
    the stacks for `max_lora_rank` and zero-pads smaller adapters, so rank-8 adapters in a
    rank-64 engine cost rank 8), and only the slices that use one of them (an adapter set that
    targets q and v leaves k out).
    """
    used = [use.any(dim=0) for use in rank_use]
    kept = [k for k, ranks in enumerate(used) if bool(ranks.any())]
    if not kept:
        return None
    rank = int(torch.nonzero(torch.stack([used[k] for k in kept]).any(dim=0)).max()) + 1
    slots, _, fan_in = lora_a[kept[0]].shape
    a_rows = torch.cat([lora_a[k][:, :rank].reshape(slots * rank, fan_in) for k in kept])
    slices = []
    for k in kept:
        b = lora_b[k][:, : sizes[k], :rank].transpose(1, 2).reshape(slots * rank, sizes[k])
        slices.append(DenseSlice(Matrix(b.to(dtype).contiguous()), y_cols[k], sizes[k]))
    macs_per_row = slots * rank * sum(fan_in + sizes[k] for k in kept)
    return DenseLinear(Matrix(a_rows.to(dtype).t()), tuple(slices), slots, rank, macs_per_row)


def slot_rank_use(
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    dirty: Sequence[int] | None = None,
    old: torch.Tensor | None = None,
) -> torch.Tensor:
    """`(slots, rank)`: whether the A row and the B column of each rank index are nonzero in
    that slot (both: otherwise that rank adds nothing). With `dirty` and the `old` result,
    only the `dirty` slots are read again."""
    if dirty is None or old is None or old.shape != (lora_a.shape[0], lora_a.shape[1]):
        return lora_a.any(dim=2) & lora_b.any(dim=1)
    use = old.clone()
    for slot in dirty:
        use[slot] = lora_a[slot].any(dim=1) & lora_b[slot].any(dim=0)
    return use


def slot_mask(
    slot_indices: torch.Tensor, slots: int, rank: int, dtype: torch.dtype, scale: float
) -> torch.Tensor:
    """`(rows, slots * rank)`: `scale` in the columns of a row's own slot, 0 elsewhere."""
    hit = slot_indices.unsqueeze(1) == torch.arange(slots)
    return hit.to(dtype).mul_(scale).repeat_interleave(rank, dim=1)


def dense_linear(y: torch.Tensor, x: torch.Tensor, layer: DenseLinear, mask: torch.Tensor) -> None:
    """Add the LoRA of every row of `x` to `y` in place; `mask` from `slot_mask`."""
    t = layer.shrink.product(x)
    width = layer.slots * layer.rank
    t.view(t.shape[0], -1, width).mul_(mask.unsqueeze(1))
    for k, s in enumerate(layer.slices):
        y[:, s.y_col : s.y_col + s.size].add_(s.expand.product(t[:, k * width : (k + 1) * width]))
