"""The segment-grouped CPU LoRA ops against vLLM's torch reference ops, on random tensors.

vLLM's reference indexes the weight stacks with the row's slot, so a base-model row (slot -1)
reads the *last* slot. To compare like with like, the reference gets the stacks with one extra
all-zero slot appended: slot -1 then contributes nothing, which is what a base row must get.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from vllm.lora.layers import LoRAMapping
from vllm.lora.ops.torch_ops import (
    bgmv_expand,
    bgmv_expand_slice,
    bgmv_shrink,
    sgmv_expand,
    sgmv_shrink,
)
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
from vllm.lora.punica_wrapper.utils import compute_meta

from server.lora_cpu import dense, ops
from server.lora_cpu.punica import SegmentedPunicaWrapperCPU

pytestmark = [pytest.mark.cpu_only, pytest.mark.vllm]

HIDDEN = 64
RANK = 8
SLOTS = 4

TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}


def _runs(*runs: tuple[int, int]) -> list[int]:
    """Per-row slots from `(slot, length)` runs, e.g. a prefill batch of several prompts."""
    return [slot for slot, length in runs for _ in range(length)]


BATCHES: dict[str, list[int]] = {
    # prefill: each prompt's tokens together, varied lengths, base prompts in between
    "prefill_mixed": _runs((0, 7), (-1, 5), (2, 13), (1, 1), (-1, 3), (2, 4), (3, 9)),
    # decode: one token per sequence, adapters interleaved
    "decode_mixed": [0, -1, 3, 1, 0, 2, -1, 3, 3, 1, 0, -1, 2, 2, 0, 1],
    # slots 1 and 2 unused: empty segments between used ones
    "empty_segments": _runs((0, 3), (-1, 2), (3, 6), (0, 2)),
    "one_adapter": _runs((2, 11)),
    "one_adapter_with_base": _runs((-1, 4), (1, 6), (-1, 3)),
    "all_base": _runs((-1, 9)),
    "single_row": [3],
    # one long prompt next to decode rows: the per-segment layout is the one `auto` picks
    "long_prompt_and_decode": [*_runs((1, 700)), 0, 3, -1, 2, 3],
}
LAYOUTS: tuple[ops.Layout, ...] = ("auto", "padded", "segments", "dense")
DTYPES = (torch.float32, torch.bfloat16)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Close within the tolerance of `dtype` (the inputs' dtype; by default `expected`'s).

    The absolute tolerance scales with the largest value: bfloat16 rounds relative to magnitude,
    and the reference rounds at other points than the fast ops (which compute in float32).
    """
    rtol, atol = TOLERANCE[dtype or expected.dtype]
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


def _with_zero_slot(stacked: torch.Tensor) -> torch.Tensor:
    """The stack with an all-zero slot appended, which vLLM's reference reads for slot -1."""
    return torch.cat([stacked, torch.zeros_like(stacked[:1])])


def _prefill_meta(
    indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    starts, lengths, slots, batches, max_len, tokens, _ = compute_meta(indices)
    return starts, lengths, slots, batches, max_len, tokens


@dataclass
class Case:
    """Random inputs for one batch: per-row slots, activations and slot-stacked weights."""

    indices: torch.Tensor
    x: torch.Tensor
    lora_a: torch.Tensor  # (slots, 1, rank, in)
    lora_b: torch.Tensor  # (slots, 1, out, rank)


def _case(rows: list[int], dtype: torch.dtype, out: int = 48, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    return Case(
        indices=torch.tensor(rows, dtype=torch.long),
        x=torch.randn(len(rows), HIDDEN, generator=g).to(dtype),
        lora_a=(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) / HIDDEN**0.5).to(dtype),
        lora_b=torch.randn(SLOTS, 1, out, RANK, generator=g).to(dtype),
    )


# --- plans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BATCHES)
def test_plan_groups_rows_by_slot(name: str) -> None:
    rows = BATCHES[name]
    plan = ops.plan_segments(torch.tensor(rows))
    assert plan.num_rows == len(rows)
    assert plan.num_lora_rows == sum(1 for s in rows if s != -1)
    assert plan.empty == all(s == -1 for s in rows)
    assert list(plan.slots) == sorted({s for s in rows if s != -1})
    for slot, start, count in zip(plan.slots, plan.starts, plan.counts, strict=True):
        segment = plan.rows[start : start + count].tolist()
        assert segment == [i for i, s in enumerate(rows) if s == slot]


def test_plan_layouts() -> None:
    decode = ops.plan_segments(torch.tensor(BATCHES["decode_mixed"]))
    assert decode.padded and decode.dense_mode is None  # dense where the layer is narrow enough
    assert not ops.plan_segments(torch.tensor(BATCHES["long_prompt_and_decode"])).padded
    plan = ops.plan_segments(torch.tensor(BATCHES["one_adapter_with_base"]))
    assert plan.padded and plan.row_range == (4, 10) and plan.sliced
    assert plan.dense_mode is False  # one adapter: the dense form would only multiply the work
    assert ops.plan_segments(torch.tensor(BATCHES["decode_mixed"]), "dense").dense_mode is True
    assert ops.plan_segments(torch.tensor(BATCHES["decode_mixed"]), "segments").dense_mode is False


# --- single ops against the reference ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_shrink(name: str, layout: ops.Layout, dtype: torch.dtype, scale: float) -> None:
    case = _case(BATCHES[name], dtype)
    plan = ops.plan_segments(case.indices, layout)
    actual = torch.zeros(len(case.indices), RANK, dtype=torch.float32)
    ops.lora_shrink(actual, case.x, case.lora_a, plan, scale)

    expected = torch.zeros_like(actual)
    bgmv_shrink(case.x, _with_zero_slot(case.lora_a), expected, case.indices, scale)
    _close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", BATCHES)
def test_shrink_prefill_reference(name: str, layout: ops.Layout, dtype: torch.dtype) -> None:
    """Same as above against the sgmv (prefill) reference, which vLLM's CPU wrapper calls."""
    case = _case(BATCHES[name], dtype, seed=1)
    plan = ops.plan_segments(case.indices, layout)
    actual = torch.zeros(len(case.indices), RANK, dtype=torch.float32)
    ops.lora_shrink(actual, case.x, case.lora_a, plan, 0.25)

    expected = torch.zeros_like(actual)
    sgmv_shrink(case.x, _with_zero_slot(case.lora_a), expected, *_prefill_meta(case.indices), 0.25)
    _close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand(name: str, layout: ops.Layout, dtype: torch.dtype, add_inputs: bool) -> None:
    case = _case(BATCHES[name], dtype, seed=2)
    plan = ops.plan_segments(case.indices, layout)
    g = torch.Generator().manual_seed(3)
    buffer = torch.randn(len(case.indices), RANK, generator=g)  # float32, like vLLM's
    y0 = torch.randn(len(case.indices), case.lora_b.shape[2], generator=g).to(dtype)

    actual = y0.clone()
    ops.lora_expand(actual, buffer, case.lora_b, plan, add_inputs=add_inputs)

    expected = y0.clone()
    sgmv_expand(
        buffer, _with_zero_slot(case.lora_b), expected, *_prefill_meta(case.indices), add_inputs
    )
    lora_rows = case.indices != -1
    _close(actual[lora_rows], expected[lora_rows])
    # base rows are never touched (the reference overwrites them when add_inputs is False)
    assert torch.equal(actual[~lora_rows], y0[~lora_rows])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["decode_mixed", "prefill_mixed", "one_adapter"])
def test_expand_slice(name: str, layout: ops.Layout, dtype: torch.dtype) -> None:
    case = _case(BATCHES[name], dtype, seed=4)
    plan = ops.plan_segments(case.indices, layout)
    g = torch.Generator().manual_seed(5)
    buffer = torch.randn(len(case.indices), RANK, generator=g)
    size = case.lora_b.shape[2]
    y0 = torch.randn(len(case.indices), 16 + size + 8, generator=g).to(dtype)

    actual = y0.clone()
    ops.lora_expand(actual, buffer, case.lora_b, plan, offset=16, size=size)
    expected = y0.clone()
    bgmv_expand_slice(buffer, _with_zero_slot(case.lora_b), expected, case.indices, 16, size)
    _close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_narrower_output(dtype: torch.dtype) -> None:
    """Logits and embeddings: B may be wider than `y` (padding); the common columns are used."""
    case = _case(BATCHES["decode_mixed"], dtype, out=40, seed=6)
    plan = ops.plan_segments(case.indices)
    buffer = torch.randn(len(case.indices), RANK)
    actual = torch.zeros(len(case.indices), 32, dtype=dtype)
    ops.lora_expand(actual, buffer, case.lora_b, plan)
    expected = torch.zeros_like(actual)
    bgmv_expand(buffer, _with_zero_slot(case.lora_b), expected, case.indices)
    _close(actual, expected)


# --- the wrapper, layer by layer, against vLLM's PunicaWrapperCPU -----------------------------


def _wrappers(
    rows: list[int], layout: ops.Layout
) -> tuple[SegmentedPunicaWrapperCPU, PunicaWrapperCPU]:
    """Both wrappers with the same step metadata (slot i holds adapter id i + 1)."""
    mapping = LoRAMapping(
        tuple(s + 1 if s >= 0 else 0 for s in rows),
        tuple(s + 1 if s >= 0 else 0 for s in rows),
        is_prefill=True,
    )
    lora_index_to_id: list[int | None] = [i + 1 for i in range(SLOTS)]
    fast = SegmentedPunicaWrapperCPU(4096, 256, "cpu")
    reference = PunicaWrapperCPU(4096, 256, "cpu")
    for wrapper in (fast, reference):
        wrapper.update_metadata(mapping, lora_index_to_id, SLOTS + 1, 1000)
    if layout != "auto":
        fast._token_plan = ops.plan_segments(fast.token_lora_indices, layout)
    return fast, reference


def _stacks(
    g: torch.Generator, dtype: torch.dtype, fan_in: int, outs: tuple[int, ...]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    lora_a = tuple(
        (torch.randn(SLOTS, 1, RANK, fan_in, generator=g) / fan_in**0.5).to(dtype) for _ in outs
    )
    lora_b = tuple((torch.randn(SLOTS, 1, o, RANK, generator=g) * 0.5).to(dtype) for o in outs)
    return lora_a, lora_b


def _zero_slotted(stacks: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(_with_zero_slot(s) for s in stacks)


MERGED = {"single": (48,), "qkv": (48, 16, 16), "gate_up": (96, 96)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("merged", MERGED)
def test_add_lora_linear(name: str, layout: ops.Layout, dtype: torch.dtype, merged: str) -> None:
    rows = BATCHES[name]
    fast, reference = _wrappers(rows, layout)
    g = torch.Generator().manual_seed(7)
    outs = MERGED[merged]
    lora_a, lora_b = _stacks(g, dtype, HIDDEN, outs)
    x = torch.randn(len(rows), HIDDEN, generator=g).to(dtype)
    y0 = torch.randn(len(rows), sum(outs), generator=g).to(dtype)

    actual = y0.clone()
    fast.add_lora_linear(actual, x, lora_a, lora_b, 1.0, outs)
    expected = y0.clone()
    reference.add_lora_linear(expected, x, _zero_slotted(lora_a), _zero_slotted(lora_b), 1.0, outs)
    _close(actual, expected)
    base_rows = torch.tensor(rows) == -1
    assert torch.equal(actual[base_rows], y0[base_rows])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("merged", ["qkv", "gate_up"])
def test_adapters_swapped_through_the_slots_step_after_step(
    layout: ops.Layout, merged: str
) -> None:
    """vLLM puts an adapter into a slot in place (reset, then copy) and reports the slots'
    adapters at every step. Twelve swaps into random slots, adapters of half or full rank, some
    on one slice only: after each, the wrapper (its cache copying the changed slot only) gives
    what the reference computes from the stacks, on a mixed batch and on the new slot alone."""
    outs = MERGED[merged]
    g = torch.Generator().manual_seed(23)
    lora_a, lora_b = _stacks(g, torch.float32, HIDDEN, outs)
    for k, a in enumerate(lora_a):
        a[:, :, RANK // 2 :] = 0  # the first adapters are of half the rank: a swap widens it
        if k:
            a[SLOTS - 1] = 0  # and the last slot's on the first slice only
    fast = SegmentedPunicaWrapperCPU(4096, 256, "cpu")
    reference = PunicaWrapperCPU(4096, 256, "cpu")
    ids = [i + 1 for i in range(SLOTS)]
    slot = SLOTS - 1
    for step in range(12):
        if step:
            slot = int(torch.randint(SLOTS, (1,), generator=g))
            rank = RANK if step % 3 else RANK // 2
            new_a, new_b = _stacks(g, torch.float32, HIDDEN, outs)
            for k, (a, b) in enumerate(zip(lora_a, lora_b, strict=True)):
                a[slot].zero_()  # vLLM's reset_lora, then set_lora of the slices it targets
                b[slot].zero_()
                if step % 4 == 0 and k > 0:
                    continue
                a[slot, :, :rank].copy_(new_a[k][slot, :, :rank])
                b[slot, :, :, :rank].copy_(new_b[k][slot, :, :, :rank])
            ids[slot] = 10 + step
        for rows in (BATCHES["decode_mixed"], [slot] * 5):
            lora_ids = tuple(ids[s] if s >= 0 else 0 for s in rows)
            mapping = LoRAMapping(lora_ids, lora_ids, is_prefill=False)
            for wrapper in (fast, reference):
                wrapper.update_metadata(mapping, list[int | None](ids), SLOTS + 1, 1000)
            if layout != "auto":
                fast._token_plan = ops.plan_segments(fast.token_lora_indices, layout)
            x = torch.randn(len(rows), HIDDEN, generator=g)
            y0 = torch.randn(len(rows), sum(outs), generator=g)
            actual, expected = y0.clone(), y0.clone()
            fast.add_lora_linear(actual, x, lora_a, lora_b, 1.0, outs)
            reference.add_lora_linear(
                expected, x, _zero_slotted(lora_a), _zero_slotted(lora_b), 1.0, outs
            )
            _close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["prefill_mixed", "decode_mixed", "all_base", "one_adapter"])
def test_add_shrink_then_expand(name: str, layout: ops.Layout, dtype: torch.dtype) -> None:
    """The row-parallel path (o_proj, down_proj): shrink into a float32 buffer, then expand."""
    rows = BATCHES[name]
    fast, reference = _wrappers(rows, layout)
    g = torch.Generator().manual_seed(8)
    lora_a, lora_b = _stacks(g, dtype, 96, (HIDDEN,))
    x = torch.randn(len(rows), 96, generator=g).to(dtype)
    y0 = torch.randn(len(rows), HIDDEN, generator=g).to(dtype)

    results = []
    for wrapper, a, b in (
        (fast, lora_a, lora_b),
        (reference, _zero_slotted(lora_a), _zero_slotted(lora_b)),
    ):
        buffer = torch.zeros(1, len(rows), RANK, dtype=torch.float32)
        wrapper.add_shrink(buffer, x, a, 1.0)
        y = y0.clone()
        wrapper.add_expand(y, buffer, b, (HIDDEN,), offset_start=0, add_input=True)
        results.append((buffer, y))
    (fast_buffer, fast_y), (ref_buffer, ref_y) = results
    _close(fast_buffer, ref_buffer, dtype)
    _close(fast_y, ref_y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["prefill_mixed", "decode_mixed", "all_base"])
def test_add_lora_embedding(name: str, dtype: torch.dtype) -> None:
    rows = BATCHES[name]
    fast, reference = _wrappers(rows, "auto")
    g = torch.Generator().manual_seed(9)
    lora_b = (torch.randn(SLOTS, 1, HIDDEN, RANK, generator=g)).to(dtype)
    x = torch.randn(len(rows), RANK, generator=g).to(dtype)  # the looked-up rows of A
    y0 = torch.randn(len(rows), HIDDEN, generator=g).to(dtype)
    actual, expected = y0.clone(), y0.clone()
    fast.add_lora_embedding(actual, x, lora_b, add_input=True)
    reference.add_lora_embedding(expected, x, _with_zero_slot(lora_b), add_input=True)
    _close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["decode_mixed", "one_adapter_with_base", "all_base"])
def test_add_lora_logits(name: str, dtype: torch.dtype) -> None:
    rows = BATCHES[name]
    fast, reference = _wrappers(rows, "auto")
    g = torch.Generator().manual_seed(10)
    vocab, padded_vocab = 100, 128
    lora_a = (torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) / HIDDEN**0.5).to(dtype)
    lora_b = torch.randn(SLOTS, 1, vocab, RANK, generator=g).to(dtype)
    x = torch.randn(len(rows), HIDDEN, generator=g).to(dtype)
    y0 = torch.randn(len(rows), padded_vocab, generator=g).to(dtype)
    actual, expected = y0.clone(), y0.clone()
    fast.add_lora_logits(actual, x, lora_a, lora_b, 0.5)
    reference.add_lora_logits(expected, x, _with_zero_slot(lora_a), _with_zero_slot(lora_b), 0.5)
    _close(actual, expected)


# --- slots reused across steps, more adapters than slots ------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_more_adapters_than_slots(layout: ops.Layout) -> None:
    """Ten adapters through four slots: each step loads some into slots, in place, as vLLM does.

    Nothing may be cached across a change of a slot's weights: every step must match a direct
    per-row computation with the adapter that occupies the slot at that step.
    """
    g = torch.Generator().manual_seed(11)
    adapters = [
        (torch.randn(RANK, HIDDEN, generator=g) / HIDDEN**0.5, torch.randn(32, RANK, generator=g))
        for _ in range(10)
    ]
    lora_a = torch.zeros(SLOTS, 1, RANK, HIDDEN)
    lora_b = torch.zeros(SLOTS, 1, 32, RANK)
    state = ops.LoraState()  # kept across steps, as the wrapper keeps it
    for step in range(6):
        in_slots = [(step * 3 + k) % len(adapters) for k in range(SLOTS)]
        for slot, adapter in enumerate(in_slots):
            lora_a[slot, 0].copy_(adapters[adapter][0])
            lora_b[slot, 0].copy_(adapters[adapter][1])
        rows = [(step + i) % (SLOTS + 1) - 1 for i in range(13)]
        plan = ops.plan_segments(torch.tensor(rows), layout)
        x = torch.randn(len(rows), HIDDEN, generator=g)
        y = torch.zeros(len(rows), 32)
        ops.lora_linear(y, x, (lora_a,), (lora_b,), 1.0, (32,), plan, state=state)
        for i, slot in enumerate(rows):
            if slot == -1:
                expected = torch.zeros(32)
            else:
                a, b = adapters[in_slots[slot]]
                expected = (x[i] @ a.T) @ b.T
            torch.testing.assert_close(y[i], expected, rtol=1e-5, atol=1e-5)


def test_all_base_batch_touches_nothing() -> None:
    fast, _ = _wrappers(BATCHES["all_base"], "auto")
    assert fast.token_plan.empty
    y = torch.randn(9, 48)
    y0 = y.clone()
    x = torch.randn(9, HIDDEN)
    g = torch.Generator().manual_seed(12)
    lora_a, lora_b = _stacks(g, torch.float32, HIDDEN, (48,))
    fast.add_lora_linear(y, x, lora_a, lora_b, 1.0, (48,))
    assert torch.equal(y, y0)


def test_no_weight_copy_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops never index a weight stack with a per-row index (the cost being removed)."""
    calls: list[tuple[int, ...]] = []
    original: Callable[..., torch.Tensor] = torch.Tensor.__getitem__

    def spy(self: torch.Tensor, key: object) -> torch.Tensor:
        if isinstance(key, torch.Tensor) and self.dim() == 4:
            calls.append(tuple(self.shape))
        return original(self, key)

    case = _case(BATCHES["decode_mixed"], torch.float32)
    monkeypatch.setattr(torch.Tensor, "__getitem__", spy)
    for layout in LAYOUTS:
        plan = ops.plan_segments(case.indices, layout)
        ops.lora_linear(
            torch.zeros(len(case.indices), 48),
            case.x,
            (case.lora_a,),
            (case.lora_b,),
            1.0,
            (48,),
            plan,
        )
    assert calls == []


# --- the dense form -------------------------------------------------------------------------


def test_dense_form_is_chosen_by_its_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` runs the dense form of a several-adapter batch of a bfloat16 model while rows ×
    its multiply-adds per row stay within `DENSE_MAX_MACS`, the grouped products beyond, never
    for one adapter, and never for a float32 model (same weight bytes, `slots` times the
    arithmetic)."""
    runs: list[int] = []
    original = dense.dense_linear

    def counted(*args: Any) -> torch.Tensor:
        runs.append(1)
        return original(*args)

    monkeypatch.setattr(dense, "dense_linear", counted)
    builds: list[torch.dtype] = []
    original_build = dense.build_dense_linear

    def counted_build(*args: Any) -> dense.DenseLinear | None:
        builds.append(args[4])
        return original_build(*args)

    monkeypatch.setattr(dense, "build_dense_linear", counted_build)
    g = torch.Generator().manual_seed(17)
    lora_a, lora_b = _stacks(g, torch.bfloat16, HIDDEN, MERGED["qkv"])
    form = _dense_form(lora_a, lora_b, (48, 16, 16), (0, 48, 64), torch.bfloat16)
    assert form is not None and form.macs_per_row == SLOTS * RANK * (3 * HIDDEN + 48 + 16 + 16)
    rows = BATCHES["decode_mixed"]
    for limit, name, dtype, expected in (
        (len(rows) * form.macs_per_row * 10, "decode_mixed", torch.bfloat16, 1),
        (len(rows) * form.macs_per_row // 10, "decode_mixed", torch.bfloat16, 0),
        (1 << 40, "one_adapter", torch.bfloat16, 0),
        (1 << 40, "decode_mixed", torch.float32, 0),
    ):
        monkeypatch.setattr(ops, "DENSE_MAX_MACS", limit)
        runs.clear()
        y = torch.zeros(len(BATCHES[name]), 80, dtype=dtype)
        x = torch.randn(len(BATCHES[name]), HIDDEN, generator=g).to(dtype)
        plan = ops.plan_segments(torch.tensor(BATCHES[name]))
        ops.lora_linear(y, x, lora_a, lora_b, 1.0, (48, 16, 16), plan)
        assert len(runs) == expected, (limit, name, dtype)
    assert torch.float32 not in builds  # a float32 model never packs the dense form


def _dense_form(
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    sizes: tuple[int, ...],
    y_cols: tuple[int, ...],
    dtype: torch.dtype,
) -> dense.DenseLinear | None:
    """`dense.build_dense_linear` of vLLM-shaped `(slots, 1, ...)` stacks."""
    a3 = [a[:, 0] for a in lora_a]
    b3 = [b[:, 0] for b in lora_b]
    use = [dense.slot_rank_use(a, b[:, :size]) for a, b, size in zip(a3, b3, sizes, strict=True)]
    return dense.build_dense_linear(a3, b3, sizes, y_cols, dtype, use)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_form_keeps_only_the_ranks_in_use(dtype: torch.dtype) -> None:
    """Stacks sized for rank 8 holding adapters of rank 3 and 5 (vLLM zero-pads them): the
    dense form runs rank 5, and matches the reference."""
    rows = BATCHES["decode_mixed"]
    fast, reference = _wrappers(rows, "dense")
    g = torch.Generator().manual_seed(19)
    lora_a, lora_b = _stacks(g, dtype, HIDDEN, MERGED["gate_up"])
    for slot, rank in enumerate((3, 5, 5, 3)):
        for a, b in zip(lora_a, lora_b, strict=True):
            a[slot, :, rank:] = 0
            b[slot, :, :, rank:] = 0
    form = _dense_form(lora_a, lora_b, (96, 96), (0, 96), dtype)
    assert form is not None and form.rank == 5
    x = torch.randn(len(rows), HIDDEN, generator=g).to(dtype)
    y0 = torch.randn(len(rows), 192, generator=g).to(dtype)
    actual, expected = y0.clone(), y0.clone()
    fast.add_lora_linear(actual, x, lora_a, lora_b, 1.0, MERGED["gate_up"])
    reference.add_lora_linear(
        expected, x, _zero_slotted(lora_a), _zero_slotted(lora_b), 1.0, MERGED["gate_up"]
    )
    _close(actual, expected)


def test_dense_form_without_onednn_dtype() -> None:
    """float16, which vLLM's oneDNN GEMM refuses, runs the dense form with torch's product."""
    case = _case(BATCHES["decode_mixed"], torch.float16, seed=18)
    plan = ops.plan_segments(case.indices, "dense")
    actual = torch.zeros(len(case.indices), 48, dtype=torch.float16)
    ops.lora_linear(actual, case.x, (case.lora_a,), (case.lora_b,), 0.5, (48,), plan)
    expected = torch.zeros(len(case.indices), 48)
    for i, slot in enumerate(case.indices.tolist()):
        if slot != -1:
            a, b = case.lora_a[slot, 0].float(), case.lora_b[slot, 0].float()
            expected[i] = 0.5 * (case.x[i].float() @ a.T) @ b.T
    _close(actual.float(), expected, torch.bfloat16)


# --- the weight cache ------------------------------------------------------------------------


def test_weight_cache_follows_in_place_writes() -> None:
    """vLLM loads an adapter into a slot in place; the cached copy must follow, once."""
    cache = ops.WeightCache()
    case = _case(BATCHES["decode_mixed"], torch.float32, seed=13)
    first = cache.shrink_weights((case.lora_a,))
    assert cache.shrink_weights((case.lora_a,)) is first  # unchanged stack: no rebuild
    case.lora_a[2].zero_()  # vLLM's reset_lora
    second = cache.shrink_weights((case.lora_a,))
    assert second is not first
    assert second.nonzero[0] == (True, True, False, True)
    torch.testing.assert_close(second.weights[2], torch.zeros(HIDDEN, RANK))
    case.lora_a[2, 0].copy_(torch.ones(RANK, HIDDEN))  # vLLM's set_lora
    third = cache.shrink_weights((case.lora_a,))
    assert third.nonzero[0] == (True, True, True, True)
    torch.testing.assert_close(third.weights[2], torch.ones(HIDDEN, RANK))


def test_weight_cache_copies_only_the_slots_whose_adapter_changed() -> None:
    """With the slots' adapters reported, a rebuild copies the slots whose adapter changed;
    a write no report explains rebuilds every slot."""
    cache = ops.WeightCache()
    cache.note_slots([1, 2, 3, 4])
    (lora_a,), (lora_b,) = _stacks(torch.Generator().manual_seed(21), torch.float32, HIDDEN, (48,))
    first = cache.linear((lora_a,), (lora_b,), (48,), torch.float32)
    lora_a[2].fill_(1.0)  # adapter 9 put into slot 2
    lora_a[1].fill_(5.0)  # a write to slot 1 that no report explains
    cache.note_slots([1, 2, 9, 4])
    second = cache.linear((lora_a,), (lora_b,), (48,), torch.float32)
    assert second is not first
    torch.testing.assert_close(second.shrink.weights[2], torch.ones(HIDDEN, RANK))
    assert not bool((second.shrink.weights[1] == 5.0).any())  # slot 1 was not copied again
    lora_a[3].zero_()  # reported by nothing either: every slot is copied
    third = cache.linear((lora_a,), (lora_b,), (48,), torch.float32)
    torch.testing.assert_close(third.shrink.weights[1], torch.full((HIDDEN, RANK), 5.0))
    assert third.shrink.nonzero[0] == (True, True, True, False)


def test_weight_cache_forgets_freed_stacks() -> None:
    cache = ops.WeightCache()
    stack = torch.randn(SLOTS, 1, RANK, HIDDEN)
    cache.shrink_weights((stack,))
    assert len(cache) == 1
    del stack
    assert len(cache) == 0


def test_zero_slots_are_skipped_and_exact() -> None:
    """A slot whose weights are zero (an adapter not targeting this layer) adds nothing."""
    rows = BATCHES["decode_mixed"]
    case = _case(rows, torch.float32, seed=14)
    case.lora_b.zero_()
    y = torch.randn(len(rows), 48)
    y0 = y.clone()
    ops.lora_linear(
        y, case.x, (case.lora_a,), (case.lora_b,), 1.0, (48,), ops.plan_segments(case.indices)
    )
    assert torch.equal(y, y0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["decode_mixed", "prefill_mixed", "empty_segments"])
def test_add_lora_linear_slots_with_zero_slices(
    name: str, layout: ops.Layout, dtype: torch.dtype
) -> None:
    """Merged qkv where the adapters target different slices, as a q,v adapter next to an
    all-linear one: slot 0 has q and v only, slot 1 nothing, slot 2 k only, slot 3 all. The
    result must match the reference; slot 1's rows, slot 0's k columns and base rows stay
    exactly as they were."""
    rows = BATCHES[name]
    fast, reference = _wrappers(rows, layout)
    g = torch.Generator().manual_seed(16)
    outs = MERGED["qkv"]
    lora_a, lora_b = _stacks(g, dtype, HIDDEN, outs)
    for slot, kept in ((0, (0, 2)), (1, ()), (2, (1,))):
        for k in range(len(outs)):
            if k not in kept:
                lora_a[k][slot].zero_()
                lora_b[k][slot].zero_()
    x = torch.randn(len(rows), HIDDEN, generator=g).to(dtype)
    y0 = torch.randn(len(rows), sum(outs), generator=g).to(dtype)

    actual = y0.clone()
    fast.add_lora_linear(actual, x, lora_a, lora_b, 0.5, outs)
    expected = y0.clone()
    reference.add_lora_linear(expected, x, _zero_slotted(lora_a), _zero_slotted(lora_b), 0.5, outs)
    _close(actual, expected)
    untouched = torch.tensor([s in (-1, 1) for s in rows])
    assert torch.equal(actual[untouched], y0[untouched])
    k_cols = slice(outs[0], outs[0] + outs[1])
    slot0 = torch.tensor(rows) == 0
    assert torch.equal(actual[slot0, k_cols], y0[slot0, k_cols])


# --- the plugin ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(None, True), ("1", True), ("0", False), ("false", False), ("Off", False)],
)
def test_plugin_env_switch(
    monkeypatch: pytest.MonkeyPatch, value: str | None, enabled: bool
) -> None:
    from server.lora_cpu import plugin

    if value is None:
        monkeypatch.delenv(plugin.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(plugin.ENV_VAR, value)
    assert plugin.fast_cpu_lora_enabled() is enabled


def test_plugin_points_the_cpu_platform_at_the_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.platforms import current_platform
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from server.lora_cpu import plugin

    assert current_platform.is_cpu()
    platform_cls = type(current_platform)
    # start from vLLM's own method (the plugin may have run in this process already) and
    # undo whatever this test does to the class when it ends
    original = platform_cls.__dict__.get(
        plugin._ORIGINAL, platform_cls.__dict__["get_punica_wrapper"]
    )
    monkeypatch.setattr(platform_cls, "get_punica_wrapper", original)
    monkeypatch.setattr(platform_cls, plugin._MARKER, False, raising=False)

    monkeypatch.setenv(plugin.ENV_VAR, "0")
    plugin.register()
    assert current_platform.get_punica_wrapper().endswith("PunicaWrapperCPU")
    assert "server.lora_cpu" not in current_platform.get_punica_wrapper()

    monkeypatch.setenv(plugin.ENV_VAR, "1")
    plugin.register()
    plugin.register()  # idempotent: vLLM may load plugins more than once per process
    assert current_platform.get_punica_wrapper() == plugin.PUNICA_WRAPPER
    assert resolve_obj_by_qualname(plugin.PUNICA_WRAPPER) is SegmentedPunicaWrapperCPU


def test_plugin_is_a_no_op_off_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.platforms import current_platform

    from server.lora_cpu import plugin

    platform_cls = type(current_platform)
    before = platform_cls.__dict__["get_punica_wrapper"]
    monkeypatch.setattr(platform_cls, plugin._MARKER, False, raising=False)
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    monkeypatch.setenv(plugin.ENV_VAR, "1")
    plugin.register()
    assert platform_cls.__dict__["get_punica_wrapper"] is before


def test_add_lora_logits_rows_outside_the_sampler_mapping() -> None:
    """Prompt log-probs: vLLM sends one request's rows; fine while no adapter has an lm_head."""
    fast, _ = _wrappers(BATCHES["decode_mixed"], "auto")
    lora_a = torch.zeros(SLOTS, 1, RANK, HIDDEN)
    lora_b = torch.zeros(SLOTS, 1, 100, RANK)
    x = torch.randn(5, HIDDEN)  # not len(decode_mixed) rows
    y = torch.randn(5, 128)
    y0 = y.clone()
    fast.add_lora_logits(y, x, lora_a, lora_b, 1.0)
    assert torch.equal(y, y0)
    lora_a[1].normal_()
    lora_b[1].normal_()
    with pytest.raises(NotImplementedError, match="lm_head"):
        fast.add_lora_logits(y, x, lora_a, lora_b, 1.0)


def test_vllm_reference_applies_the_last_slot_to_base_rows() -> None:
    """Why the reference gets a zero slot appended above, and a reason for the fast ops.

    vLLM's own CPU ops index the stacks with slot -1 for base-model rows, which reads the last
    slot: once that slot holds an adapter, base requests get its delta. The fast ops skip them.
    """
    rows = [-1, 0, -1, SLOTS - 1]
    fast, reference = _wrappers(rows, "auto")
    g = torch.Generator().manual_seed(15)
    lora_a, lora_b = _stacks(g, torch.float32, HIDDEN, (48,))
    x = torch.randn(len(rows), HIDDEN, generator=g)
    stock, ours = torch.zeros(len(rows), 48), torch.zeros(len(rows), 48)
    reference.add_lora_linear(stock, x, lora_a, lora_b, 1.0, (48,))
    fast.add_lora_linear(ours, x, lora_a, lora_b, 1.0, (48,))
    last_slot_delta = x[0] @ lora_a[0][SLOTS - 1, 0].T @ lora_b[0][SLOTS - 1, 0].T
    torch.testing.assert_close(stock[0], last_slot_delta)  # vLLM 0.32's behaviour
    assert torch.equal(ours[0], torch.zeros(48)) and torch.equal(ours[2], torch.zeros(48))
    torch.testing.assert_close(ours[1:4:2], stock[1:4:2])
