"""Segment-grouped multi-LoRA operations for CPU.

vLLM keeps every adapter's weights stacked by *slot*: `lora_a` is `(slots, 1, rank, in)` and
`lora_b` is `(slots, 1, out, rank)`, and every row of a batch (a token, or a row of logits)
names the slot it uses, `-1` for the base model. vLLM's torch reference ops
(`vllm/lora/ops/torch_ops/lora_ops.py`) index the stacks with that per-row index, which copies a
whole weight matrix for every row, then run one matrix-vector product per row.

Here the rows are grouped once per step into *segments*, one per slot in use (a `SegmentPlan`),
and each segment costs one pair of small matrix products against its slot's weights. Base-model
rows are skipped. Two layouts, chosen per step by `plan_segments`:

- *padded* (decode, balanced batches): the segments are laid out as a `(slots, width, features)`
  block, `width` being the longest segment, and one batched product (`torch.bmm`) serves all
  adapters at once. A handful of operations per layer whatever the number of adapters: what
  decode, dominated by the fixed cost of each operation, needs.
- *segments* (prefill, unbalanced batches): one `torch.mm` per segment, so one long prompt does
  not pad every other adapter to its length.

For a whole linear layer (`lora_linear`) with several adapters in the batch, a third form usually
wins: the *dense* form of `server.lora_cpu.dense`, every row against every slot's weights in two
large products, the other slots masked out. It costs `slots` times the arithmetic but runs it at
the speed of the base model's own GEMMs, on half the weight bytes where the model runs in
bfloat16; it is used there for the layers where it stays within `DENSE_MAX_MACS` (every layer of
a decode step, the narrow ones of prefill chunks). A float32 model keeps the grouped products.

The products run in float32 on a float32 copy of the stacks kept by a `WeightCache`, transposed
to the layout the products read (the A of merged layers side by side, so q, k and v share one
product). On CPU a bfloat16 product of these small shapes costs several times a float32 one
(oneDNN sets up each call), and the copy is refreshed only when vLLM writes a slot, which it
detects from the stacks' version counters. The cache also records which slots hold all-zero
weights (an adapter not targeting a layer): products that only such slots would use are skipped.
Temporaries live in reusable `Scratch` buffers, and what a layer needs per step (its weights,
which of its slices the batch's adapters use) is looked up once and remembered, so that the
Python around each product stays a small part of its cost.

All functions update `y` in place, like the operations they replace.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from server.lora_cpu import dense

NO_LORA = -1
"""The slot index of rows served by the base model alone."""

COMPUTE_DTYPE = torch.float32
"""The dtype the products run in (their inputs are converted, the result added to `y`).
bfloat16 products measured no faster in the engine (their fixed cost offsets the halved weight
traffic) and round more."""


# The padded layout is used while its padding (rows computed for nothing) stays within
# `PAD_FACTOR * rows + PAD_ROWS_PER_SEGMENT * segments`: a padding row costs arithmetic only, a
# segment of the per-segment layout costs a few more operations (a fixed overhead each).
PAD_FACTOR = 1
PAD_ROWS_PER_SEGMENT = 32

# For a batch of several adapters, `lora_linear` runs the dense form (`server.lora_cpu.dense`)
# of a layer while it costs at most this many multiply-adds: `slots` times the arithmetic of
# the grouped products, at several times their speed on the few rows per adapter of a decode
# step; on prefill-sized batches of wide adapters the grouped products cost less.
DENSE_MAX_MACS = 1 << 26

Layout = Literal["auto", "padded", "segments", "dense"]


@dataclass(frozen=True, eq=False)
class SegmentPlan:
    """The rows of one batch grouped by adapter slot, computed once per step.

    `rows` lists the rows that use an adapter, grouped by slot in increasing slot order (stable
    within a slot); segment `i` is `rows[starts[i] : starts[i] + counts[i]]` and uses slot
    `slots[i]`. Products write their results in *plan order*: the order of `rows`, or with the
    padded layout the `(slot_span, width)` block where slot `first_slot + p` fills block row `p`
    (`padded_rows` gives the batch row of each entry; padding entries repeat a real row and their
    results are never read). `gather_index[row]` is where a batch row's result lies in plan
    order, so one gather puts results back in batch order.
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
    """Batch row of each padded-block entry; None with the per-segment layout."""
    gather_index: torch.Tensor
    """`(num_rows,)`: position in plan order of each batch row's result (0 for base rows)."""
    lora_row_mask: torch.Tensor | None
    """`(num_rows, 1)` float32, 1 on adapter rows and 0 on base rows; None without base rows."""
    num_lora_rows: int
    """How many rows use an adapter."""
    empty: bool
    """True when every row is served by the base model alone."""
    padded: bool
    """True when the batched (padded) layout is used."""
    sliced: bool
    """True when the adapter rows are one contiguous range, already in plan order."""
    slot_indices: torch.Tensor
    """`(num_rows,)`: the slot of every row, -1 for base rows."""
    dense_mode: bool | None
    """Whether `lora_linear` runs the dense form: always (True), never (False), or for a
    bfloat16 model's layers where it costs at most `DENSE_MAX_MACS` (None)."""
    _masks: dict[tuple[int, int, torch.dtype, float], torch.Tensor] = field(default_factory=dict)

    def considers_dense(self, dtype: torch.dtype) -> bool:
        """Whether the dense form may run this step for a model in `dtype` (its cost per layer
        decides then, `uses_dense`); the form is only built where it may.

        `auto` considers it only for a model dtype narrower than `COMPUTE_DTYPE` (bfloat16):
        there it reads half the weight bytes of the grouped products' float32 copy, on the
        CPU's bfloat16 instructions. In float32 both read the same bytes and the dense form
        does `slots` times the arithmetic: on an AVX2 CPU it cost 1.6x the grouped products
        for 8 adapters of rank 16 on all linear layers, 32 decode rows (`docs/lora_cpu.md`)."""
        if self.dense_mode is None:
            return dtype.itemsize < COMPUTE_DTYPE.itemsize
        return self.dense_mode

    def uses_dense(self, form: dense.DenseLinear) -> bool:
        """Whether `lora_linear` runs the dense form `form` of a layer for this step."""
        if self.dense_mode is None:
            return self.num_rows * form.macs_per_row <= DENSE_MAX_MACS
        return self.dense_mode

    def slot_mask(self, slots: int, rank: int, dtype: torch.dtype, scale: float) -> torch.Tensor:
        """`dense.slot_mask` of this step, made once per step and shape."""
        key = (slots, rank, dtype, scale)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = dense.slot_mask(self.slot_indices, slots, rank, dtype, scale)
        return mask


def plan_segments(indices: torch.Tensor, layout: Layout = "auto") -> SegmentPlan:
    """Group the rows of a batch by the adapter slot in `indices` (one entry per row, -1: base).

    `layout` forces the padded or the per-segment layout (for tests); `auto` picks the padded one
    while its padding stays small (see `PAD_FACTOR`).
    """
    indices = indices.reshape(-1).to(device="cpu", dtype=torch.long)
    num_rows = int(indices.shape[0])
    lora_rows = torch.nonzero(indices != NO_LORA).flatten()
    num_lora_rows = int(lora_rows.shape[0])
    if num_lora_rows == 0:
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
            gather_index=torch.zeros(num_rows, dtype=torch.long),
            lora_row_mask=None,
            num_lora_rows=0,
            empty=True,
            padded=False,
            sliced=False,
            slot_indices=indices,
            dense_mode=False,
        )
    lora_slots = indices[lora_rows]
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

    first_row = int(rows[0])
    row_range: tuple[int, int] | None = None
    if int(rows[-1]) - first_row + 1 == num_lora_rows and bool(
        torch.all(rows[1:] - rows[:-1] == 1)
    ):
        row_range = (first_row, first_row + num_lora_rows)

    first_slot = slots[0]
    slot_span = slots[-1] - first_slot + 1
    width = max(counts)
    padded_size = slot_span * width
    use_padded = layout == "padded" or (
        layout in ("auto", "dense")
        and padded_size - num_lora_rows
        <= PAD_FACTOR * num_lora_rows + PAD_ROWS_PER_SEGMENT * len(slots)
    )
    position = torch.arange(num_lora_rows)  # plan-order position of each entry of `rows`
    padded_rows: torch.Tensor | None = None
    if use_padded:
        rank_in_segment = position - torch.repeat_interleave(torch.tensor(starts), counts_t)
        position = (sorted_slots - first_slot) * width + rank_in_segment
        if padded_size == num_lora_rows:
            padded_rows = rows
        else:
            padded_rows = torch.full((padded_size,), first_row, dtype=torch.long)
            padded_rows[position] = rows
    gather_index = torch.zeros(num_rows, dtype=torch.long)
    gather_index[rows] = position
    lora_row_mask: torch.Tensor | None = None
    if num_lora_rows < num_rows:
        lora_row_mask = (indices != NO_LORA).to(torch.float32).unsqueeze(1)
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
        gather_index=gather_index,
        lora_row_mask=lora_row_mask,
        num_lora_rows=num_lora_rows,
        empty=False,
        padded=use_padded,
        sliced=row_range is not None and (not use_padded or slot_span == 1),
        slot_indices=indices,
        dense_mode=(
            True if layout == "dense" else None if layout == "auto" and len(slots) > 1 else False
        ),
    )


# --- weights ---------------------------------------------------------------------------------


def _as_3d(stacked: torch.Tensor) -> torch.Tensor:
    """`(slots, 1, m, n)` or `(slots, m, n)` weights as a `(slots, m, n)` view."""
    if stacked.dim() == 4:
        return stacked.select(1, 0)
    if stacked.dim() != 3:
        raise ValueError(f"LoRA weights must be 3-D or 4-D, got shape {tuple(stacked.shape)}")
    return stacked


def _versions(stacks: tuple[torch.Tensor, ...]) -> tuple[int, ...] | None:
    """The stacks' in-place version counters; None where torch keeps none (inference tensors)."""
    try:
        return tuple([s._version for s in stacks])
    except RuntimeError:
        return None


def _nonzero_slots(
    stack: torch.Tensor, dirty: Sequence[int] | None = None, old: tuple[bool, ...] | None = None
) -> tuple[bool, ...]:
    """Whether each slot of `stack` holds a nonzero weight; with `dirty` and the `old` flags,
    only the `dirty` slots are read again."""
    s3 = _as_3d(stack)
    if dirty is None or old is None or len(old) != s3.shape[0]:
        return tuple(bool(f) for f in s3.reshape(s3.shape[0], -1).any(dim=1))
    flags = list(old)
    for slot in dirty:
        flags[slot] = bool(s3[slot].any())
    return tuple(flags)


@dataclass(eq=False)
class CachedWeights:
    """The weights of all slots in product layout, and which slots hold nonzero weights.

    `nonzero[part][slot]` is False when that slot's weights of that part (slice) are all zero:
    vLLM gives every supported layer LoRA stacks, and an adapter that does not target a layer
    (a q,v adapter in the MLP) leaves its slot there zeroed; such products are skipped.
    """

    weights: torch.Tensor
    nonzero: tuple[tuple[bool, ...], ...]

    def any_nonzero(self, part: int, slots: Sequence[int]) -> bool:
        """Whether any of `slots` holds nonzero weights in `part`."""
        flags = self.nonzero[part]
        return any(flags[slot] for slot in slots)


@dataclass(eq=False)
class _Slice:
    """One slice of a linear layer's LoRA as the products use it."""

    t_col: int  # its columns in the shrink result
    rank: int
    y_col: int  # its columns in the layer output
    size: int
    expand: CachedWeights


@dataclass(eq=False)
class LinearWeights:
    """A linear layer's LoRA in product layout: the A of its slices side by side, each B."""

    shrink: CachedWeights
    slices: tuple[_Slice, ...]
    sources: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] = ((), ())
    """vLLM's A and B stacks, 3-D, for the dense form."""
    rank_use: tuple[torch.Tensor, ...] = ()
    """Per slice, `(slots, rank)`: the ranks each slot uses (`dense.slot_rank_use`)."""
    _plan: SegmentPlan | None = None
    _active: tuple[_Slice, ...] = ()
    _dense: dict[torch.dtype, dense.DenseLinear | None] = field(default_factory=dict)

    def dense_form(self, dtype: torch.dtype) -> dense.DenseLinear | None:
        """The dense form in `dtype` (built on first use)."""
        if dtype not in self._dense:
            lora_a, lora_b = self.sources
            self._dense[dtype] = dense.build_dense_linear(
                lora_a,
                lora_b,
                [s.size for s in self.slices],
                [s.y_col for s in self.slices],
                dtype,
                self.rank_use,
            )
        return self._dense[dtype]

    def active(self, plan: SegmentPlan) -> tuple[_Slice, ...]:
        """The slices that some adapter of the step has nonzero weights for (memoised per step)."""
        if plan is not self._plan:
            self._active = tuple(
                s
                for k, s in enumerate(self.slices)
                if self.shrink.any_nonzero(k, plan.slots) and s.expand.any_nonzero(0, plan.slots)
            )
            self._plan = plan
        return self._active


@dataclass(eq=False)
class _Entry:
    refs: tuple[weakref.ref[torch.Tensor], ...]
    versions: tuple[int, ...]
    value: LinearWeights
    generations: tuple[int, ...]
    """The cache's slot generations when the entry was built."""


@dataclass(eq=False)
class WeightCache:
    """Copies of slot-stacked LoRA weights in the dtype and layout of the products, kept current.

    An entry is rebuilt whenever one of its source stacks was written in place since (vLLM
    loads an adapter into a slot with `copy_`, which bumps the stack's version counter) and
    dropped when a source stack is freed. Stacks without a version counter are converted on
    every call.

    vLLM writes a slot only when it puts an adapter there. The wrapper reports which adapter
    each slot holds at every step (`note_slots`), so a rebuild copies and scans only the slots
    whose adapter changed since the entry was built: loading one adapter into an engine of 8
    slots costs one slot's copy, not eight. A write with no adapter change seen (a caller
    that never reports slots) rebuilds every slot.
    """

    _entries: dict[tuple[object, ...], _Entry] = field(default_factory=dict)
    _slot_ids: list[int | None] = field(default_factory=list)
    _generations: list[int] = field(default_factory=list)
    _clock: int = 0

    def note_slots(self, lora_index_to_id: Sequence[int | None]) -> None:
        """Record the adapter id each slot holds (vLLM's `lora_index_to_id`) before the
        step's products: a slot whose id changed has been written."""
        for slot, lora_id in enumerate(lora_index_to_id):
            if slot < len(self._slot_ids) and self._slot_ids[slot] == lora_id:
                continue
            self._clock += 1
            if slot < len(self._slot_ids):
                self._slot_ids[slot], self._generations[slot] = lora_id, self._clock
            else:
                self._slot_ids.append(lora_id)
                self._generations.append(self._clock)

    def _dirty_slots(
        self, entry: _Entry | None, stacks: tuple[torch.Tensor, ...]
    ) -> Sequence[int] | None:
        """The slots to copy again into `entry` (built from these same stacks, now written),
        or None for all of them."""
        if entry is None or not all(r() is s for r, s in zip(entry.refs, stacks, strict=True)):
            return None
        slots = _as_3d(stacks[0]).shape[0]
        known = entry.generations
        if len(known) < slots or len(self._generations) < slots:
            return None
        dirty = [slot for slot in range(slots) if self._generations[slot] != known[slot]]
        return dirty or None

    def __len__(self) -> int:
        return len(self._entries)

    def linear(
        self,
        lora_a_stacked: Sequence[torch.Tensor],
        lora_b_stacked: Sequence[torch.Tensor],
        output_slices: Sequence[int],
        dtype: torch.dtype,
        offset_start: int = 0,
    ) -> LinearWeights:
        """The weights of a (possibly merged) linear layer's LoRA."""
        stacks = (*lora_a_stacked, *lora_b_stacked)
        key = ("linear", dtype, offset_start, tuple(output_slices), *map(id, stacks))
        entry = self._entries.get(key)
        if self._current(entry, stacks):
            assert entry is not None
            return entry.value
        n = len(output_slices)
        dirty = self._dirty_slots(entry, stacks)
        value = _build_linear(
            stacks[:n], stacks[n:], output_slices, dtype, offset_start, entry, dirty
        )
        self._keep(key, stacks, value)
        return value

    @staticmethod
    def _current(entry: _Entry | None, stacks: tuple[torch.Tensor, ...]) -> bool:
        """Whether `entry` was built from these very stacks, unwritten since."""
        return (
            entry is not None
            and _versions(stacks) == entry.versions
            and all(r() is s for r, s in zip(entry.refs, stacks, strict=True))
        )

    def _keep(
        self,
        key: tuple[object, ...],
        stacks: tuple[torch.Tensor, ...],
        value: LinearWeights,
    ) -> None:
        """Remember `value` until a stack is written (versions) or freed (weak references)."""
        versions = _versions(stacks)
        if versions is None:
            return  # no version counters: nothing to keep current, build every call
        entries = self._entries

        def forget(_: object, key: tuple[object, ...] = key) -> None:
            entries.pop(key, None)

        refs = tuple(weakref.ref(s, forget) for s in stacks)
        self._entries[key] = _Entry(refs, versions, value, tuple(self._generations))

    def shrink_weights(
        self, lora_a_stacked: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32
    ) -> CachedWeights:
        """`(slots, in, sum of ranks)`: the A of every slice, transposed, side by side."""
        stacks = tuple(lora_a_stacked)
        return self._single(("shrink", dtype, *map(id, stacks)), stacks, dtype, None)

    def expand_weights(
        self, lora_b_stacked: torch.Tensor, size: int, dtype: torch.dtype = torch.float32
    ) -> CachedWeights:
        """`(slots, rank, size)`: B transposed, its first `size` outputs."""
        key = ("expand", dtype, size, id(lora_b_stacked))
        return self._single(key, (lora_b_stacked,), dtype, size)

    def _single(
        self,
        key: tuple[object, ...],
        stacks: tuple[torch.Tensor, ...],
        dtype: torch.dtype,
        size: int | None,
    ) -> CachedWeights:
        """Shrink weights (`size` None) or expand weights, cached like `linear`."""
        entry = self._entries.get(key)
        if self._current(entry, stacks):
            assert entry is not None
            return entry.value.shrink
        dirty = self._dirty_slots(entry, stacks)
        old = entry.value.shrink if entry is not None else None
        old_weights = old.weights if old is not None else None
        if size is None:
            weights, dirty = _shrink_layout(stacks, dtype, old_weights, dirty)
            nonzero = tuple(
                _nonzero_slots(s, dirty, old.nonzero[k] if old is not None else None)
                for k, s in enumerate(stacks)
            )
        else:
            b3 = _as_3d(stacks[0])
            weights, dirty = _expand_layout(b3, size, dtype, old_weights, dirty)
            nonzero = (
                _nonzero_slots(b3[:, :size], dirty, old.nonzero[0] if old is not None else None),
            )
        cached = CachedWeights(weights, nonzero)
        self._keep(key, stacks, LinearWeights(cached, ()))
        return cached


def _fits(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    return out is not None and tuple(out.shape) == shape and out.dtype == dtype


def _copy_slots(out: torch.Tensor, part: torch.Tensor, dirty: Sequence[int] | None) -> None:
    """`out[:] = part`, or only the `dirty` slots (dimension 0)."""
    if dirty is None:
        out.copy_(part)
        return
    for slot in dirty:
        out[slot].copy_(part[slot])


def _expand_layout(
    b3: torch.Tensor,
    size: int,
    dtype: torch.dtype,
    out: torch.Tensor | None,
    dirty: Sequence[int] | None = None,
) -> tuple[torch.Tensor, Sequence[int] | None]:
    """B transposed into `out` (a new buffer when it does not fit: every slot copied then);
    returns it and the slots copied (None: all)."""
    part = b3[:, :size].transpose(1, 2)  # (slots, rank, size)
    if out is None or not _fits(out, tuple(part.shape), dtype):
        out, dirty = torch.empty(tuple(part.shape), dtype=dtype), None
    _copy_slots(out, part, dirty)
    return out, dirty


def _shrink_layout(
    stacks: Sequence[torch.Tensor],
    dtype: torch.dtype,
    out: torch.Tensor | None,
    dirty: Sequence[int] | None = None,
) -> tuple[torch.Tensor, Sequence[int] | None]:
    """The A of every slice, transposed, side by side, like `_expand_layout`."""
    parts = [_as_3d(a).transpose(1, 2) for a in stacks]  # (slots, in, rank) each
    shape = (parts[0].shape[0], parts[0].shape[1], sum(p.shape[2] for p in parts))
    if out is None or not _fits(out, shape, dtype):
        out, dirty = torch.empty(shape, dtype=dtype), None
    col = 0
    for part in parts:
        _copy_slots(out[:, :, col : col + part.shape[2]], part, dirty)
        col += part.shape[2]
    return out, dirty


def _build_linear(
    lora_a_stacked: Sequence[torch.Tensor],
    lora_b_stacked: Sequence[torch.Tensor],
    output_slices: Sequence[int],
    dtype: torch.dtype,
    offset_start: int,
    previous: _Entry | None,
    dirty: Sequence[int] | None,
) -> LinearWeights:
    """Lay the stacks out for the products (into the previous buffers when they fit, copying
    only the `dirty` slots there when given)."""
    old = previous.value if previous is not None else None
    if old is None or len(old.slices) != len(output_slices):
        old, dirty = None, None
    a_out, dirty = _shrink_layout(
        lora_a_stacked, dtype, old.shrink.weights if old is not None else None, dirty
    )
    slices = []
    rank_use = []
    t_col, y_col = 0, offset_start
    for k, (lora_a, lora_b, size) in enumerate(
        zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True)
    ):
        a3, b3 = _as_3d(lora_a), _as_3d(lora_b)
        rank = a3.shape[1]
        before = old.slices[k] if old is not None else None
        b_weights, copied = _expand_layout(
            b3, size, dtype, before.expand.weights if before is not None else None, dirty
        )
        b_nonzero = before.expand.nonzero[0] if before is not None else None
        expand = CachedWeights(b_weights, (_nonzero_slots(b3[:, :size], copied, b_nonzero),))
        slices.append(_Slice(t_col, rank, y_col, size, expand))
        rank_use.append(
            dense.slot_rank_use(
                a3, b3[:, :size], copied, old.rank_use[k] if old is not None else None
            )
        )
        t_col += rank
        y_col += size
    nonzero = tuple(
        _nonzero_slots(a, dirty, old.shrink.nonzero[k] if old is not None else None)
        for k, a in enumerate(lora_a_stacked)
    )
    sources = (tuple(map(_as_3d, lora_a_stacked)), tuple(map(_as_3d, lora_b_stacked)))
    return LinearWeights(CachedWeights(a_out, nonzero), tuple(slices), sources, tuple(rank_use))


# --- scratch space -------------------------------------------------------------------------


@dataclass(eq=False)
class Scratch:
    """Reusable buffers for the temporaries of the products, grown as needed, never shrunk.

    A temporary above glibc's mmap threshold (128 KiB by default: 32 decode rows of a 1536-wide
    float32 output) is mapped fresh at each allocation and page-faulted in on first touch, which
    in a virtual machine costs more than the arithmetic on it. Each name is one buffer; a caller
    must not hold a view across another `get` of the same name.
    """

    _buffers: dict[tuple[str, torch.dtype], torch.Tensor] = field(default_factory=dict)
    _views: dict[tuple[str, torch.dtype, tuple[int, ...]], torch.Tensor] = field(
        default_factory=dict
    )

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (name, dtype, shape)
        view = self._views.get(key)
        if view is not None:
            return view
        numel = math.prod(shape)
        buffer = self._buffers.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(max(numel, 1), dtype=dtype)
            self._buffers[(name, dtype)] = buffer
            for stale in [k for k in self._views if k[0] == name and k[1] == dtype]:
                del self._views[stale]
        view = buffer[:numel].view(shape)
        if len(self._views) > 4096:  # prefill shapes vary from step to step
            self._views.clear()
        self._views[key] = view
        return view


@dataclass(eq=False)
class LoraState:
    """What the operations keep between calls: the weights in product layout, the scratch."""

    weights: WeightCache = field(default_factory=WeightCache)
    scratch: Scratch = field(default_factory=Scratch)


# --- the products --------------------------------------------------------------------------


def _gather(
    x: torch.Tensor, plan: SegmentPlan, scratch: Scratch, name: str, dtype: torch.dtype
) -> torch.Tensor:
    """The plan's rows of `x` in plan order, in `dtype`: `(slot_span, width, n)` when padded,
    `(num_lora_rows, n)` otherwise."""
    n = x.shape[-1]
    if plan.sliced:
        assert plan.row_range is not None
        picked = x[plan.row_range[0] : plan.row_range[1]]
    else:
        index = plan.padded_rows if plan.padded_rows is not None else plan.rows
        out = scratch.get(name, (index.shape[0], n), x.dtype)
        picked = torch.index_select(x, 0, index, out=out)
    if picked.dtype != dtype:
        picked = scratch.get(name + ".cast", tuple(picked.shape), dtype).copy_(picked)
    if plan.padded:
        return picked.view(plan.slot_span, plan.width, n)
    return picked


def _product(
    rows: torch.Tensor, weights: torch.Tensor, plan: SegmentPlan, scratch: Scratch, name: str
) -> torch.Tensor:
    """`rows @ weights[slot]` per segment; `rows` and the result in plan order.

    `weights` is `(slots, k, n)` for all slots; `rows` is `(slot_span, width, k)` when padded
    (one batched product), `(num_lora_rows, k)` otherwise (one product per segment).
    """
    n = weights.shape[2]
    if plan.padded:
        out = scratch.get(name, (plan.slot_span, plan.width, n), rows.dtype)
        if plan.slot_span != weights.shape[0]:
            weights = weights[plan.first_slot : plan.first_slot + plan.slot_span]
        return torch.bmm(rows, weights, out=out)
    out = scratch.get(name, (rows.shape[0], n), rows.dtype)
    for slot, start, count in zip(plan.slots, plan.starts, plan.counts, strict=True):
        torch.mm(rows[start : start + count], weights[slot], out=out[start : start + count])
    return out


def _add_to_rows(
    y: torch.Tensor, result: torch.Tensor, plan: SegmentPlan, scratch: Scratch
) -> None:
    """`y[row] += result[plan position of row]` for the adapter rows; base rows unchanged."""
    n = result.shape[-1]
    flat = result.view(-1, n)
    if plan.sliced:
        assert plan.row_range is not None
        picked = flat
        target = y[plan.row_range[0] : plan.row_range[1]]
    else:
        out = scratch.get("add", (plan.num_rows, n), flat.dtype)
        picked = torch.index_select(flat, 0, plan.gather_index, out=out)
        if plan.lora_row_mask is not None:
            picked.mul_(plan.lora_row_mask)
        target = y
    if picked.dtype != y.dtype:
        picked = scratch.get("add.cast", (picked.shape[0], n), y.dtype).copy_(picked)
    target.add_(picked)


def _zero_rows(target: torch.Tensor, plan: SegmentPlan) -> None:
    if plan.row_range is not None:
        target[plan.row_range[0] : plan.row_range[1]] = 0
    else:
        target.index_fill_(0, plan.rows, 0)


def lora_shrink(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: torch.Tensor,
    plan: SegmentPlan,
    scale: float = 1.0,
    state: LoraState | None = None,
) -> None:
    """`y[i, :rank] += scale * x[i] @ A[slot(i)]^T` for every row `i` that uses an adapter.

    `y` is `(rows, >= rank)` (vLLM passes a zeroed float32 buffer), `x` is `(rows, in)`,
    `lora_a_stacked` is `(slots, 1, rank, in)`. Base-model rows of `y` are left as they are.
    """
    if plan.empty:
        return
    state = state if state is not None else LoraState()
    dtype = COMPUTE_DTYPE
    a = state.weights.shrink_weights((lora_a_stacked,), dtype)
    if not a.any_nonzero(0, plan.slots):
        return
    scratch = state.scratch
    t = _product(_gather(x, plan, scratch, "x", dtype), a.weights, plan, scratch, "t")
    if scale != 1.0:
        t.mul_(scale)
    _add_to_rows(y[:, : a.weights.shape[2]], t, plan, scratch)


def lora_expand(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    plan: SegmentPlan,
    offset: int = 0,
    size: int | None = None,
    add_inputs: bool = True,
    state: LoraState | None = None,
) -> None:
    """`y[i, offset : offset + size] (+)= x[i] @ B[slot(i)]^T` for rows `i` that use an adapter.

    `y` is `(rows, >= offset + size)`, `x` is `(rows, rank)` (vLLM's float32 buffer),
    `lora_b_stacked` is `(slots, 1, out, rank)`. `size` defaults to `min(out, y.shape[1] -
    offset)`; only the first `size` outputs of B are used. With `add_inputs=False` the adapter
    rows are overwritten; base-model rows are never touched.
    """
    if plan.empty:
        return
    if size is None:
        size = min(_as_3d(lora_b_stacked).shape[1], y.shape[1] - offset)
    target = y[:, offset : offset + size]
    if not add_inputs:
        _zero_rows(target, plan)
    state = state if state is not None else LoraState()
    dtype = COMPUTE_DTYPE
    b = state.weights.expand_weights(lora_b_stacked, size, dtype)
    if not b.any_nonzero(0, plan.slots):
        return
    scratch = state.scratch
    rows = _gather(x[:, : b.weights.shape[1]], plan, scratch, "t", dtype)
    _add_to_rows(target, _product(rows, b.weights, plan, scratch, "delta"), plan, scratch)


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: Sequence[torch.Tensor],
    lora_b_stacked: Sequence[torch.Tensor],
    scale: float,
    output_slices: Sequence[int],
    plan: SegmentPlan,
    offset_start: int = 0,
    state: LoraState | None = None,
) -> None:
    """The full LoRA of a (possibly merged) linear layer, added to its output `y` in place.

    For every slice `k` (q, k, v of a merged qkv layer; gate and up of a merged gate-up layer)
    and every row `i` that uses an adapter::

        y[i, o_k : o_k + output_slices[k]] += scale * (x[i] @ A_k[slot(i)]^T) @ B_k[slot(i)]^T

    with `o_k = offset_start + sum(output_slices[:k])`. The slices share one shrink product;
    slices whose weights are zero in every slot of the batch are skipped.
    """
    if not (len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)):
        raise ValueError("lora_a_stacked, lora_b_stacked and output_slices differ in length")
    if plan.empty:
        return
    state = state if state is not None else LoraState()
    dtype = COMPUTE_DTYPE
    layer = state.weights.linear(lora_a_stacked, lora_b_stacked, output_slices, dtype, offset_start)
    active = layer.active(plan)
    if not active:
        return
    form = layer.dense_form(x.dtype) if plan.considers_dense(x.dtype) else None
    if form is not None and plan.uses_dense(form):
        mask = plan.slot_mask(form.slots, form.rank, x.dtype, scale)
        dense.dense_linear(y, x, form, mask)
        return
    scratch = state.scratch
    t = _product(_gather(x, plan, scratch, "x", dtype), layer.shrink.weights, plan, scratch, "t")
    if scale != 1.0:
        t.mul_(scale)
    whole = len(layer.slices) == 1
    for s in active:
        t_k = t if whole else t[..., s.t_col : s.t_col + s.rank]
        delta = _product(t_k, s.expand.weights, plan, scratch, "delta")
        _add_to_rows(y[:, s.y_col : s.y_col + s.size], delta, plan, scratch)
