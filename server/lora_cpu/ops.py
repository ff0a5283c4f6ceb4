"""Segment-grouped multi-LoRA operations for CPU.

vLLM keeps every adapter's weights stacked by *slot*: `lora_a` is `(slots, 1, rank, in)` and
`lora_b` is `(slots, 1, out, rank)`, and every row of a batch (a token, or a row of logits)
names the slot it uses, `-1` for the base model. vLLM's torch reference ops
(`vllm/lora/ops/torch_ops/lora_ops.py`) index the stacks with that per-row index, which copies a
whole weight matrix for every row, then run one matrix-vector product per row.

Here the rows are grouped once per step into *segments*, one per slot in use (a `SegmentPlan`),
and each segment costs one pair of small matrix products against the slot's weights, read in
place. Base-model rows are skipped. Two layouts, chosen per step by `plan_segments`:

- *padded* (decode, balanced batches): the segments are laid out as a `(slots, width, features)`
  block, `width` being the longest segment, and one batched product (`torch.bmm`) serves all
  adapters at once. Padding rows are multiplied by zero. Few operations per layer, whatever the
  number of adapters: what decode, dominated by per-operation overhead, needs.
- *segments* (prefill, unbalanced batches): one `torch.mm` per segment on contiguous slices of the
  gathered rows, so a long prompt does not pad every other adapter to its length.

All functions update `y` in place, like the operations they replace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

NO_LORA = -1
"""The slot index of rows served by the base model alone."""

# The padded layout is used while its padding (rows computed for nothing) stays within
# `PAD_FACTOR * rows + PAD_ROWS_PER_SEGMENT * segments`: a padding row costs arithmetic only, a
# segment of the per-segment layout costs a few more operations (a fixed overhead each).
PAD_FACTOR = 1
PAD_ROWS_PER_SEGMENT = 32


@dataclass(frozen=True, eq=False)
class SegmentPlan:
    """The rows of one batch grouped by adapter slot, computed once per step.

    `rows` lists the rows that use an adapter, grouped by slot in increasing slot order (stable
    within a slot); segment `i` is `rows[starts[i] : starts[i] + counts[i]]` and uses slot
    `slots[i]`. When the padded layout is chosen, `padded_rows` lays those rows out as a
    `(slot_span, width)` block (slot `first_slot + p` in block row `p`), padding entries pointing
    at row 0 and masked by `padded_mask`.
    """

    num_rows: int
    rows: torch.Tensor
    slots: tuple[int, ...]
    starts: tuple[int, ...]
    counts: tuple[int, ...]
    row_range: tuple[int, int] | None
    """`(start, stop)` when `rows` is exactly `range(start, stop)`: slicing replaces gathers."""
    first_slot: int
    slot_span: int
    width: int
    padded_rows: torch.Tensor | None
    padded_mask: torch.Tensor | None
    """`(slot_span, width, 1)` float32, 1 on real rows, 0 on padding; None without padding."""
    _scales: dict[tuple[torch.dtype, float], torch.Tensor | None] = field(
        default_factory=dict, repr=False
    )

    @property
    def num_lora_rows(self) -> int:
        """How many rows use an adapter."""
        return int(self.rows.shape[0])

    @property
    def empty(self) -> bool:
        """True when every row is served by the base model alone."""
        return not self.slots

    @property
    def padded(self) -> bool:
        """True when the batched (padded) layout is used."""
        return self.padded_rows is not None

    def row_scale(self, dtype: torch.dtype, scale: float) -> torch.Tensor | None:
        """The `(slot_span, width, 1)` factor that zeroes padding rows and applies `scale`.

        None when there is neither padding to zero nor a scale to apply.
        """
        key = (dtype, float(scale))
        if key not in self._scales:
            if self.padded_mask is None:
                factor = None if scale == 1.0 else torch.full((1, 1, 1), scale, dtype=dtype)
            else:
                factor = (self.padded_mask * scale).to(dtype)
            self._scales[key] = factor
        return self._scales[key]


Layout = Literal["auto", "padded", "segments"]


def plan_segments(indices: torch.Tensor, layout: Layout = "auto") -> SegmentPlan:
    """Group the rows of a batch by the adapter slot in `indices` (one entry per row, -1: base).

    `layout` forces the padded or the per-segment layout (for tests); `auto` picks the padded one
    while its padding stays small (see `PAD_FACTOR`).
    """
    indices = indices.reshape(-1).to(device="cpu", dtype=torch.long)
    num_rows = int(indices.shape[0])
    lora_rows = torch.nonzero(indices != NO_LORA).flatten()
    lora_slots = indices[lora_rows]
    if lora_rows.numel() == 0:
        return SegmentPlan(
            num_rows=num_rows,
            rows=lora_rows,
            slots=(),
            starts=(),
            counts=(),
            row_range=None,
            first_slot=0,
            slot_span=0,
            width=0,
            padded_rows=None,
            padded_mask=None,
        )
    order = torch.argsort(lora_slots, stable=True)
    rows = lora_rows[order]
    sorted_slots = lora_slots[order]
    unique_slots, counts_t = torch.unique_consecutive(sorted_slots, return_counts=True)
    slots = tuple(int(s) for s in unique_slots.tolist())
    counts = tuple(int(c) for c in counts_t.tolist())
    starts_list = [0]
    for count in counts[:-1]:
        starts_list.append(starts_list[-1] + count)
    starts = tuple(starts_list)
    num_lora_rows = int(rows.shape[0])

    first_row = int(rows[0])
    row_range: tuple[int, int] | None = None
    if int(rows[-1]) - first_row + 1 == num_lora_rows and bool(
        torch.all(rows[1:] - rows[:-1] == 1)
    ):
        row_range = (first_row, first_row + num_lora_rows)

    first_slot = slots[0]
    slot_span = slots[-1] - first_slot + 1
    width = max(counts)
    padded_rows: torch.Tensor | None = None
    padded_mask: torch.Tensor | None = None
    padded_size = slot_span * width
    use_padded = layout == "padded" or (
        layout == "auto"
        and padded_size - num_lora_rows
        <= PAD_FACTOR * num_lora_rows + PAD_ROWS_PER_SEGMENT * len(slots)
    )
    if use_padded:
        rank_in_segment = torch.arange(num_lora_rows) - torch.repeat_interleave(
            torch.tensor(starts), counts_t
        )
        position = (sorted_slots - first_slot) * width + rank_in_segment
        if padded_size == num_lora_rows:
            padded_rows = rows
        else:
            padded_rows = torch.zeros(padded_size, dtype=torch.long)
            padded_rows[position] = rows
            mask = torch.zeros(padded_size, dtype=torch.float32)
            mask[position] = 1.0
            padded_mask = mask.view(slot_span, width, 1)
    return SegmentPlan(
        num_rows=num_rows,
        rows=rows,
        slots=slots,
        starts=starts,
        counts=counts,
        row_range=row_range,
        first_slot=first_slot,
        slot_span=slot_span,
        width=width,
        padded_rows=padded_rows,
        padded_mask=padded_mask,
    )


def _as_3d(stacked: torch.Tensor) -> torch.Tensor:
    """`(slots, 1, m, n)` or `(slots, m, n)` weights as a `(slots, m, n)` view."""
    if stacked.dim() == 4:
        return stacked.select(1, 0)
    if stacked.dim() != 3:
        raise ValueError(f"LoRA weights must be 3-D or 4-D, got shape {tuple(stacked.shape)}")
    return stacked


def _slot_weights(stacked: torch.Tensor, plan: SegmentPlan, dtype: torch.dtype) -> torch.Tensor:
    """The `(slot_span, m, n)` weights of the slots the plan's padded block covers."""
    weights = _as_3d(stacked)[plan.first_slot : plan.first_slot + plan.slot_span]
    return weights if weights.dtype == dtype else weights.to(dtype)


def _weight(stacked3: torch.Tensor, slot: int, dtype: torch.dtype) -> torch.Tensor:
    weight = stacked3[slot]
    return weight if weight.dtype == dtype else weight.to(dtype)


def _gather_rows(x: torch.Tensor, plan: SegmentPlan, dtype: torch.dtype) -> torch.Tensor:
    """The plan's rows of `x`, `(num_lora_rows, n)`, in segment order."""
    if plan.row_range is not None:
        picked = x[plan.row_range[0] : plan.row_range[1]]
    else:
        picked = x.index_select(0, plan.rows)
    return picked if picked.dtype == dtype else picked.to(dtype)


def _gather_padded(x: torch.Tensor, plan: SegmentPlan, dtype: torch.dtype) -> torch.Tensor:
    """The plan's rows of `x` laid out as `(slot_span, width, n)`."""
    assert plan.padded_rows is not None
    if plan.slot_span == 1 and plan.row_range is not None:
        picked = x[plan.row_range[0] : plan.row_range[1]]
    else:
        picked = x.index_select(0, plan.padded_rows)
    if picked.dtype != dtype:
        picked = picked.to(dtype)
    return picked.view(plan.slot_span, plan.width, x.shape[-1])


def _scatter_add(y: torch.Tensor, delta: torch.Tensor, plan: SegmentPlan, *, padded: bool) -> None:
    """`y[row] += delta[i]` for the plan's rows (`delta` in plan order, padded or not)."""
    if delta.dtype != y.dtype:
        delta = delta.to(y.dtype)
    if plan.row_range is not None and (not padded or plan.slot_span == 1):
        y[plan.row_range[0] : plan.row_range[1]] += delta
        return
    index = plan.padded_rows if padded else plan.rows
    assert index is not None
    y.index_add_(0, index, delta)


def _shrink_padded(
    x_block: torch.Tensor, a3: torch.Tensor, plan: SegmentPlan, scale: float
) -> torch.Tensor:
    """`(slot_span, width, rank)`: `scale * x @ A^T` per slot, zero on padding rows."""
    t = torch.bmm(x_block, a3.transpose(1, 2))
    factor = plan.row_scale(t.dtype, scale)
    if factor is not None:
        t.mul_(factor)
    return t


def _shrink_segments(
    x_rows: torch.Tensor, a3: torch.Tensor, plan: SegmentPlan, scale: float
) -> torch.Tensor:
    """`(num_lora_rows, rank)`: `scale * x @ A^T`, one product per segment."""
    t = torch.empty(x_rows.shape[0], a3.shape[1], dtype=x_rows.dtype)
    for slot, start, count in zip(plan.slots, plan.starts, plan.counts, strict=True):
        seg = slice(start, start + count)
        torch.mm(x_rows[seg], _weight(a3, slot, x_rows.dtype).t(), out=t[seg])
    if scale != 1.0:
        t.mul_(scale)
    return t


def _expand_segments(t: torch.Tensor, b3: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """`(num_lora_rows, out)`: `t @ B^T`, one product per segment."""
    out = torch.empty(t.shape[0], b3.shape[1], dtype=t.dtype)
    for slot, start, count in zip(plan.slots, plan.starts, plan.counts, strict=True):
        seg = slice(start, start + count)
        torch.mm(t[seg], _weight(b3, slot, t.dtype).t(), out=out[seg])
    return out


def lora_shrink(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: torch.Tensor,
    plan: SegmentPlan,
    scale: float = 1.0,
) -> None:
    """`y[i, :rank] += scale * x[i] @ A[slot(i)]^T` for every row `i` that uses an adapter.

    `y` is `(rows, >= rank)` (usually a float32 buffer), `x` is `(rows, in)`, `lora_a_stacked`
    is `(slots, 1, rank, in)`. Base-model rows of `y` are left as they are.
    """
    if plan.empty:
        return
    a3 = _as_3d(lora_a_stacked)
    rank = a3.shape[1]
    target = y[:, :rank]
    dtype = x.dtype
    if plan.padded:
        t = _shrink_padded(
            _gather_padded(x, plan, dtype), _slot_weights(a3, plan, dtype), plan, scale
        )
        _scatter_add(target, t.view(-1, rank), plan, padded=True)
    else:
        t = _shrink_segments(_gather_rows(x, plan, dtype), a3, plan, scale)
        _scatter_add(target, t, plan, padded=False)


def lora_expand(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    plan: SegmentPlan,
    offset: int = 0,
    size: int | None = None,
    add_inputs: bool = True,
) -> None:
    """`y[i, offset : offset + size] (+)= x[i] @ B[slot(i)]^T` for rows `i` that use an adapter.

    `y` is `(rows, >= offset + size)`, `x` is `(rows, rank)` (usually float32, cast to `y`'s
    dtype like the reference op), `lora_b_stacked` is `(slots, 1, out, rank)`. `size` defaults to
    `min(out, y.shape[1] - offset)`; only the first `size` outputs of `B` are used. With
    `add_inputs=False` the adapter rows are overwritten; base-model rows are never touched.
    """
    if plan.empty:
        return
    b3 = _as_3d(lora_b_stacked)
    if size is None:
        size = min(b3.shape[1], y.shape[1] - offset)
    b3 = b3[:, :size]
    target = y[:, offset : offset + size]
    if not add_inputs:
        _zero_rows(target, plan)
    dtype = y.dtype
    rank = b3.shape[2]
    if plan.padded:
        t = _gather_padded(x[:, :rank], plan, dtype)
        factor = plan.row_scale(dtype, 1.0)
        if factor is not None:
            t = t * factor
        delta = torch.bmm(t, _slot_weights(b3, plan, dtype).transpose(1, 2))
        _scatter_add(target, delta.view(-1, size), plan, padded=True)
    else:
        t = _gather_rows(x[:, :rank], plan, dtype)
        _scatter_add(target, _expand_segments(t, b3, plan), plan, padded=False)


def _zero_rows(target: torch.Tensor, plan: SegmentPlan) -> None:
    if plan.row_range is not None:
        target[plan.row_range[0] : plan.row_range[1]] = 0
    else:
        target.index_fill_(0, plan.rows, 0)


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: Sequence[torch.Tensor],
    lora_b_stacked: Sequence[torch.Tensor],
    scale: float,
    output_slices: Sequence[int],
    plan: SegmentPlan,
    offset_start: int = 0,
) -> None:
    """The full LoRA of a (possibly merged) linear layer, added to its output `y` in place.

    For every slice `k` (q, k, v of a merged qkv layer; gate and up of a merged gate-up layer)
    and every row `i` that uses an adapter::

        y[i, o_k : o_k + output_slices[k]] += scale * (x[i] @ A_k[slot(i)]^T) @ B_k[slot(i)]^T

    with `o_k = offset_start + sum(output_slices[:k])`. The rank-sized intermediate stays in the
    activations' dtype, as the reference rounds it to `y`'s dtype before the second product.
    """
    if not (len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)):
        raise ValueError("lora_a_stacked, lora_b_stacked and output_slices differ in length")
    if plan.empty:
        return
    dtype = x.dtype
    padded = plan.padded
    x_in = _gather_padded(x, plan, dtype) if padded else _gather_rows(x, plan, dtype)
    deltas: list[torch.Tensor] = []
    for a_stacked, b_stacked, size in zip(
        lora_a_stacked, lora_b_stacked, output_slices, strict=True
    ):
        a3 = _as_3d(a_stacked)
        b3 = _as_3d(b_stacked)[:, :size]
        if padded:
            t = _shrink_padded(x_in, _slot_weights(a3, plan, dtype), plan, scale)
            delta = torch.bmm(t, _slot_weights(b3, plan, dtype).transpose(1, 2))
            deltas.append(delta.view(-1, size))
        else:
            t = _shrink_segments(x_in, a3, plan, scale)
            deltas.append(_expand_segments(t, b3, plan))
    total = sum(output_slices)
    if offset_start == 0 and total == y.shape[1]:
        delta_all = deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=1)
        _scatter_add(y, delta_all, plan, padded=padded)
        return
    offset = offset_start
    for delta, size in zip(deltas, output_slices, strict=True):
        _scatter_add(y[:, offset : offset + size], delta, plan, padded=padded)
        offset += size
