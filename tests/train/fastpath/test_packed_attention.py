"""Packed rows in the grouped CPU attention: per-example attention equals the block mask's."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from tunesmith.data.packing import PADDING_KWARG, block_causal_mask
from tunesmith.train.fastpath import attention, native
from tunesmith.train.fastpath.attention import grouped_attention
from tunesmith.train.fastpath.packed_attention import (
    LayoutCache,
    _PlaceRows,
    _SelectRows,
    build_layout,
    mask_is_block_causal,
)


class _Module(torch.nn.Module):
    num_key_value_groups = 3


def _positions(rows: list[list[int]]) -> torch.Tensor:
    """(B, T) position ids of rows made of examples of the given lengths."""
    return torch.tensor([[p for n in row for p in range(n)] for row in rows])


def _qkv(B, T, dtype, heads=6, kv_heads=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Projections come out as (B, T, heads, d) and are viewed as (B, heads, T, d).
    q = torch.randn(B, T, heads, d, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(B, T, kv_heads, d, generator=g).to(dtype).transpose(1, 2)
    v = torch.randn(B, T, kv_heads, d, generator=g).to(dtype).transpose(1, 2)
    return [t.requires_grad_() for t in (q, k, v)]


# Rows whose examples after the first continue a shared prefix (data/shared_prefix.py):
# positions that restart at the prefix's length instead of 0.
SHARED = [
    [[0, 1, 2, 3, 4, 3, 4, 3, 4, 5, 6, 0, 1]],  # prefix 3, two continuing examples, padding
    [[0, 1, 2, 3, 2, 3, 4, 0, 1, 0], [0, 1, 2, 3, 4, 5, 1, 2, 1, 0]],  # one per row, 2 and 1
    [[3, 4, 5, 6, 0, 1, 2]],  # a first segment starting past 0 shares nothing: own slots from 0
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "rows",
    [
        [[5, 9, 1, 7]],  # one packed row, a 1-token example among them
        [[4, 8, 3], [6, 2, 7]],  # several packed rows
        [[3, 4, 8], [12, 3]],  # a tail segment, as padding forms in data/packing.py rows
        *SHARED,
    ],
)
def test_packed_rows_attend_as_eager_under_the_block_mask(dtype, rows):
    module = _Module().train()
    pos = torch.tensor(rows) if rows in SHARED else _positions(rows)
    q, k, v = _qkv(*pos.shape, dtype)
    mask = block_causal_mask(pos, dtype)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    caches = attention.AttentionCaches()
    setattr(module, attention.CACHES, caches)  # as install() hands them out
    out, probs = grouped_attention(module, q, k, v, mask, scaling=0.25, position_ids=pos)
    assert caches.layouts.layout is not None  # the packed path ran
    assert probs is None and out.shape == ref.shape
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    grads = torch.autograd.grad(out, (q, k, v), g)
    if dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-6)
    else:  # bf16 rounding of the scores and probabilities; eager's softmax runs in fp32
        tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tol)


def _with_padding(rows: list[list[int]], pads: list[int]):
    """Position ids of rows of examples, each followed by its padding (a segment restarting at
    0, as collate pads a packed row), and the (B, T) token mask that marks the padding."""
    pos = _positions([[*row, pad] for row, pad in zip(rows, pads, strict=True)])
    tokens = torch.ones_like(pos)
    for b, pad in enumerate(pads):
        tokens[b, pos.shape[1] - pad :] = 0
    return pos, tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("pos", "tokens", "real_examples"),
    [
        (*_with_padding([[5, 9, 3, 7]], [4]), 4),  # after the 3-token example: 7 <= 9 slots
        (*_with_padding([[4, 8, 3], [6, 2, 7]], [2, 2]), 6),  # both rows' padding after the 2
        (torch.tensor(SHARED[0]), torch.tensor([[1] * 11 + [0] * 2]), 3),  # shared prefix
    ],
)
# A head width of 64 takes the fused kernel in bf16 where the CPU has it (fused_attention.py).
@pytest.mark.parametrize("width", [16, 64])
def test_padding_goes_after_the_shortest_example_and_no_real_token_changes(
    dtype, pos, tokens, real_examples, width
):
    module = _Module().train()
    q, k, v = _qkv(*pos.shape, dtype, d=width)
    mask = block_causal_mask(pos, dtype)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    caches = attention.AttentionCaches()
    setattr(module, attention.CACHES, caches)
    out, _ = grouped_attention(
        module, q, k, v, mask, scaling=0.25, position_ids=pos, **{PADDING_KWARG: tokens}
    )
    layout = caches.layouts.layout
    assert layout.n == real_examples  # the padding is no example of its own
    assert layout.longest == build_layout(pos, 6, 2, dtype).longest  # nor a longer layout
    real = tokens.bool()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out[real].float(), ref[real].float(), **tol)
    # No loss reads the padding, so its output gradient is zero; then every gradient agrees,
    # the padding's own (zero) included.
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    g[~real] = 0
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.parametrize(
    ("pos", "tokens", "n"),
    [
        (*_with_padding([[4, 8, 3], [6, 2]], [2, 9]), 7),  # 2 + 11 > 8 slots: laid out alone
        (_positions([[4, 6]]), torch.tensor([[1] * 4 + [0] * 2 + [1] * 4]), 2),  # not a tail
        (_positions([[4, 6]]), torch.tensor([[1] * 8 + [0] * 2]), 2),  # a real example's end
        (_positions([[4, 6]]), None, 2),
    ],
)
def test_padding_that_does_not_fit_or_is_not_whole_tail_segments_stays_as_it_was(pos, tokens, n):
    layout = build_layout(pos, 6, 2, torch.float32, tokens)
    plain = build_layout(pos, 6, 2, torch.float32)
    assert layout.n == plain.n == n
    assert torch.equal(layout.q_slots, plain.q_slots)


def test_only_padding_aware_attention_gets_the_token_mask():
    from tests.tiny import make_tiny_model
    from tunesmith.data.packing import PADDING_AWARE_ATTENTION, attention_inputs

    assert attention.NAME in PADDING_AWARE_ATTENTION
    model = make_tiny_model("llama", vocab_size=64, attn_implementation="eager")
    pos, tokens = _with_padding([[3, 4]], [2])
    assert PADDING_KWARG not in attention_inputs(model, tokens, pos)
    model.set_attn_implementation(attention.register())
    assert attention_inputs(model, tokens, pos)[PADDING_KWARG] is tokens
    assert PADDING_KWARG not in attention_inputs(model, tokens, None)  # not packed


def test_any_other_mask_keeps_the_reference_path():
    """Position ids with a mask that is not their block mask (padding) must not be unpacked."""
    module = _Module()
    pos = _positions([[4, 5], [4, 5]])
    mask = block_causal_mask(pos, torch.float32)
    mask[1, :, :, :2] = torch.finfo(torch.float32).min  # also hide two keys of row 1
    assert not mask_is_block_causal(mask, pos)
    q, k, v = _qkv(*pos.shape, torch.float32)
    ref, ref_probs = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    out, probs = grouped_attention(module, q, k, v, mask, scaling=0.25, position_ids=pos)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert probs is not None  # the grouped path, which returns the probabilities


def test_the_block_mask_check_is_exact():
    pos = _positions([[3, 4]])
    mask = block_causal_mask(pos, torch.bfloat16)
    assert mask_is_block_causal(mask, pos)
    assert mask_is_block_causal(mask == 0, pos)  # boolean masks: True = attend
    assert not mask_is_block_causal(mask, _positions([[7]]))  # one example: plain causal
    leak = mask.clone()
    leak[0, 0, 5, 1] = 0  # one token of example 2 sees example 1
    assert not mask_is_block_causal(leak, pos)
    assert not mask_is_block_causal(mask[:, :, :, :6], pos)  # a key prefix or cache


def test_unpacked_rows_have_no_layout():
    assert build_layout(_positions([[6], [6]]), 6, 2, torch.float32) is None


def test_layout_slots_are_distinct_and_inside_the_padded_rows():
    pos = _positions([[4, 2, 3]])
    layout = build_layout(pos, heads=6, kv_heads=2, dtype=torch.float32)
    assert (layout.n, layout.longest) == (3, 4)
    for slots, heads in ((layout.q_slots, 6), (layout.kv_slots, 2)):
        flat = slots.flatten()
        assert flat.unique().numel() == flat.numel() == 9 * heads
        assert int(flat.max()) < 3 * heads * 4
    # Example 1 (tokens 4-5), head 5: rows (1 * 6 + 5) * 4 + {0, 1}.
    assert layout.q_slots[4:6, 5].tolist() == [44, 45]
    assert layout.mask.shape == (1, 3 * 4, 4)


def test_a_shared_prefix_is_copied_to_the_first_slots_of_each_continuing_example():
    pos = torch.tensor(SHARED[0])  # examples: tokens 0-4 (prefix 0-2), 5-6, 7-10, padding 11-12
    layout = build_layout(pos, heads=6, kv_heads=2, dtype=torch.float32)
    assert (layout.n, layout.longest) == (4, 7)
    # Own tokens sit at their positions: token 5 (position 3) of example 1, K/V head 1.
    assert layout.kv_slots[5, 1].item() == (1 * 2 + 1) * 7 + 3
    # The prefix (tokens 0-2) goes to slots 0-2 of examples 1 and 2, for both K/V heads.
    pairs = sorted(zip(layout.shared_rows.tolist(), layout.shared_slots.tolist(), strict=True))
    want = sorted(
        (token * 2 + h, (e * 2 + h) * 7 + token)
        for e in (1, 2)
        for h in (0, 1)
        for token in range(3)
    )
    assert pairs == want
    own = layout.kv_slots.flatten().tolist()
    assert not set(own) & set(layout.shared_slots.tolist())  # copies never overwrite a token
    assert build_layout(_positions([[4, 2]]), 6, 2, torch.float32).shared_rows is None


def test_the_layout_is_built_once_per_pass():
    cache = LayoutCache()
    pos = _positions([[3, 4]])
    mask = block_causal_mask(pos, torch.float32)
    first = cache.get(mask, pos, 6, 2, torch.float32)
    assert first is not None and cache.get(mask, pos, 6, 2, torch.float32) is first
    other = block_causal_mask(_positions([[2, 5]]), torch.float32)
    assert cache.get(other, _positions([[2, 5]]), 6, 2, torch.float32) is not first


def _source(size: int, slots, rows=None, copies=None) -> torch.Tensor:
    """Each of ``size`` slots' row: ``slots[i]`` gets row i, ``copies[j]`` row ``rows[j]``."""
    source = torch.full((size,), -1)
    source[slots] = torch.arange(len(slots))
    if rows is not None:
        source[copies] = rows
    return source


# "0": torch's index ops; "1": the kernels' row gather, where built (else the same as "0").
@pytest.fixture(params=["1", "0"])
def row_kernels(request, monkeypatch):
    monkeypatch.setenv("TUNESMITH_NATIVE", request.param)


def test_select_rows_backward_is_index_selects(row_kernels):
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([5, 0, 3, 6])
    source = torch.tensor([1, -1, -1, 2, -1, 0, 3])
    assert torch.autograd.gradcheck(lambda t: _SelectRows.apply(t, index, source), (x,))


def test_place_rows_gives_a_prefix_row_the_gradients_of_all_its_copies(row_kernels):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    slots, rows, copies = (
        torch.tensor([7, 0, 3, 9, 4]),
        torch.tensor([0, 1, 0, 1]),
        torch.tensor([1, 2, 5, 6]),
    )
    out = _PlaceRows.apply(x, slots, rows, copies, _source(10, slots, rows, copies))
    ref = x.new_zeros(10, 3).index_copy(0, slots, x)
    ref = ref.index_copy(0, copies, x.index_select(0, rows))
    assert torch.equal(out, ref)
    g = torch.randn(10, 3, dtype=torch.float64, generator=gen)
    (got,) = torch.autograd.grad(out, x, g)
    (want,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # no rounding to fp32
    plain = _PlaceRows.apply(x, slots, None, None, _source(10, slots))
    assert torch.equal(plain, x.new_zeros(10, 3).index_copy(0, slots, x))
    assert torch.equal(torch.autograd.grad(plain, x, g)[0], g[slots])


@pytest.mark.parametrize("width", [64, 45])  # a head's width; one with a tail after the vectors
def test_place_rows_adds_bf16_copies_as_the_eager_fp32_sums_do(cpu_kernels, monkeypatch, width):
    """The kernels' sum of a prefix row's copies equals the eager path's fp32 ``index_add_``
    bit for bit: the same order of adds, one rounding."""
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, width, generator=gen).bfloat16().requires_grad_()
    slots = torch.tensor([3, 10, 0, 12, 7, 1])
    rows, copies = torch.tensor([0, 0, 0, 2, 2, 5]), torch.tensor([2, 4, 13, 5, 9, 14])
    g = (torch.randn(15, width, generator=gen) * 4).bfloat16()  # sums that round
    source = _source(15, slots, rows, copies)
    grads = []
    for switch in ("1", "0"):
        monkeypatch.setenv(native.ENV, switch)
        out = _PlaceRows.apply(x, slots, rows, copies, source)
        grads.append(torch.autograd.grad(out, x, g)[0])
    assert torch.equal(grads[0], grads[1])
    total = g[3].float()  # row 0's own slot, then its copies in order, in fp32
    for c in (2, 4, 13):
        total = total + g[c].float()
    assert torch.equal(grads[0][0], total.bfloat16())
    assert torch.equal(grads[0][1], g[10])  # a row without copies: its own slot's gradient


def test_prefix_copies_are_sorted_by_row_in_the_examples_order():
    layout = build_layout(torch.tensor(SHARED[0]), 6, 2, torch.float32)
    rows = layout.shared_rows.tolist()
    assert rows == sorted(rows) and len(rows) > len(set(rows))  # each row copied twice
    for r in set(rows):
        own = [s for row, s in zip(rows, layout.shared_slots.tolist(), strict=True) if row == r]
        assert own == sorted(own)  # the first continuing example's slot first


def test_layout_sources_are_the_slots_read_the_other_way():
    pos = torch.tensor(SHARED[0])
    layout = build_layout(pos, 6, 2, torch.float32)
    assert torch.equal(layout.q_source, _source(layout.q_source.numel(), layout.q_slots.view(-1)))
    kv = _source(
        layout.kv_source.numel(), layout.kv_slots.view(-1), layout.shared_rows, layout.shared_slots
    )
    assert torch.equal(layout.kv_source, kv)
