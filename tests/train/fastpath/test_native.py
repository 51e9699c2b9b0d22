"""tunesmith's CPU kernels against the eager formulas they replace (``native/kernels.cpp``)."""

from __future__ import annotations

import os
import platform

import pytest
import torch
import torch.nn.functional as F

from tests.train.fastpath.conftest import PACKED_ROWS
from tunesmith.train.fastpath import dropout, native, rmsnorm, rope
from tunesmith.train.fastpath.packed_attention import _CausalSoftmax
from tunesmith.train.fastpath.swiglu import _SwiGLU

BF16_STEP = 2.0**-7  # one bf16 rounding, relative


@pytest.fixture
def kernels(cpu_kernels):
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    return cpu_kernels


def _close_within_a_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.detach().float().abs().clamp_min(1e-2)
    got = got.detach()
    assert float(((got.float() - want.float()).abs() / scale).max().detach()) <= 1.01 * BF16_STEP


# Shapes: a demo pass, and widths with a tail after the last full vector (32 bf16 lanes).
@pytest.mark.parametrize("shape", [(416, 1536), (3, 7, 45), (5, 33), (1, 1)])
def test_swiglu_forward_is_eager_bit_for_bit_and_gradients_within_a_rounding(kernels, shape):
    torch.manual_seed(0)
    gate = (torch.randn(shape) * 3).bfloat16().requires_grad_()
    up = torch.randn(shape).bfloat16().requires_grad_()
    gate_ref = gate.detach().clone().requires_grad_()
    up_ref = up.detach().clone().requires_grad_()
    out, want = _SwiGLU.apply(gate, up), F.silu(gate_ref) * up_ref
    assert torch.equal(out, want)
    grad = torch.randn_like(want)
    out.backward(grad)
    want.backward(grad)
    assert torch.equal(up.grad, up_ref.grad)  # grad * silu(gate), rounded as eager rounds it
    _close_within_a_rounding(gate.grad, gate_ref.grad)  # eager rounds grad * up once more


@pytest.mark.parametrize("shape", [(1, 416, 576), (5, 37), (2, 3, 64)])
def test_rms_norm_matches_the_eager_norm_within_a_rounding(kernels, shape):
    torch.manual_seed(1)
    x = (torch.randn(shape) * 3).bfloat16().requires_grad_()
    weight = (torch.randn(shape[-1]) * 0.2 + 1).bfloat16()
    x_ref = x.detach().clone().requires_grad_()
    out = rmsnorm.rms_norm(x, weight, 1e-5)
    assert type(out.grad_fn).__name__ == "_NativeRMSNormBackward"
    want = rmsnorm._RMSNorm.apply(x_ref, weight, 1e-5)
    _close_within_a_rounding(out, want)
    grad = torch.randn_like(want)
    out.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=BF16_STEP, atol=BF16_STEP)


def test_norms_that_train_their_weight_or_are_not_bf16_keep_the_eager_path(kernels):
    x = torch.randn(4, 64).bfloat16().requires_grad_()
    trained = torch.ones(64, dtype=torch.bfloat16, requires_grad=True)
    assert type(rmsnorm.rms_norm(x, trained, 1e-5).grad_fn).__name__ == "_RMSNormBackward"
    x32 = torch.randn(4, 64, requires_grad=True)
    assert type(rmsnorm.rms_norm(x32, torch.ones(64), 1e-5).grad_fn).__name__ == "_RMSNormBackward"


def test_switched_off_by_the_environment(kernels, monkeypatch):
    monkeypatch.setenv(native.ENV, "0")
    assert native.kernels() is None and native.why_not() == f"{native.ENV}=0"
    x = torch.randn(4, 64).bfloat16().requires_grad_()
    weight = torch.ones(64, dtype=torch.bfloat16)
    assert type(rmsnorm.rms_norm(x, weight, 1e-5).grad_fn).__name__ == "_RMSNormBackward"


def test_kernels_refuse_what_they_do_not_handle(kernels):
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        kernels.swiglu_forward(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        g = torch.randn(8, 4).bfloat16()
        kernels.swiglu_forward(g.t(), g.t())


def test_evicting_a_tensor_from_the_caches_keeps_its_values(kernels):
    t = torch.randn(3000, 70)  # 840 KB: lines on both threads' shares
    want = t.clone()
    view = t[5:2000:3, 1:60]  # a strided view: its whole span
    evicts = platform.machine() in ("x86_64", "AMD64")  # elsewhere: nothing, and False
    assert kernels.evict(view) == evicts and kernels.evict(t) == evicts and kernels.evict(t[:0])
    assert torch.equal(t, want)


def test_the_build_follows_the_source_torch_and_the_cpu(monkeypatch):
    name = native.extension_name()
    assert name.startswith("tunesmith_cpu_")
    monkeypatch.setattr(
        "tunesmith.precision.cpu_info", lambda: ("other", frozenset({"avx2", "fma", "f16c"}))
    )
    assert "-DCPU_CAPABILITY_AVX2" in native.compile_flags()
    assert native.extension_name() != name
    monkeypatch.setattr("tunesmith.precision.cpu_info", lambda: ("", frozenset()))
    assert native.compile_flags() == ["-O3", "-fopenmp"]  # ATen's portable vector code


def test_without_a_compiler_nothing_is_built_and_the_log_says_why(monkeypatch):
    native._kernels.cache_clear()
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    try:
        assert native.kernels() is None
        assert "no C++ compiler" in native.why_not()
        with pytest.raises(RuntimeError, match="cannot be built here"):
            native.build()
    finally:
        native._kernels.cache_clear()


def test_not_built_yet_says_how_to_build(monkeypatch):
    native._kernels.cache_clear()
    monkeypatch.setattr(native, "built", lambda: False)
    monkeypatch.setattr(native, "buildable", lambda: None)
    try:
        assert native.kernels() is None
        assert native.BUILD_COMMAND in native.why_not()
    finally:
        native._kernels.cache_clear()


# (b, heads, t, d) as the model gives it: a transposed view of (b, t, heads, d); a head width
# whose halves end in a tail after the last full vector.
@pytest.mark.parametrize(("b", "heads", "t", "d"), [(1, 9, 416, 64), (2, 4, 5, 8), (1, 2, 3, 70)])
def test_rope_is_the_eager_rope_bit_for_bit_both_ways(kernels, monkeypatch, b, heads, t, d):
    torch.manual_seed(2)
    x = torch.randn(b, t, heads, d).bfloat16().transpose(1, 2).requires_grad_()
    angle = torch.randn(b, t, d // 2).repeat(1, 1, 2)
    cos, sin = angle.cos().bfloat16(), (angle * 1.3).sin().bfloat16()  # halves of sin differ
    out, _ = rope.rope(x, x, cos, sin)
    assert type(out.grad_fn).__name__ == "_NativeRopeBackward"
    grad = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, grad)
    monkeypatch.setenv(native.ENV, "0")
    want, _ = rope.rope(x, x, cos, sin)
    assert type(want.grad_fn).__name__ == "_RopeBackward"
    (dx_want,) = torch.autograd.grad(want, x, grad)
    assert torch.equal(out, want) and out.stride() == want.stride()
    assert torch.equal(dx, dx_want)


@pytest.mark.parametrize("p", [0.05, 0.5])
# (3, 40001): the thread pool's halves start off a vector step (the kernel's scalar lead-in).
@pytest.mark.parametrize("shape", [(416, 576), (3, 40001), (3, 7, 45), (1, 1)])
def test_dropout_kernel_applies_the_dense_mask_bit_for_bit(kernels, shape, p):
    torch.manual_seed(3)
    x = torch.randn(shape).bfloat16()
    mask = dropout.draw_mask(torch.Size(shape), p, torch.bfloat16, "cpu")
    assert isinstance(mask, dropout.SeededMask)
    torch.manual_seed(3)
    torch.randn(shape)  # the same generator state as before the draw
    dense = dropout.keep_mask(torch.Size(shape), p, torch.bfloat16, "cpu")
    assert torch.equal(mask.dense(), dense)  # the same seed makes the same mask
    got, want = (
        dropout.masked_scale(x, mask, 1 / (1 - p)),
        dropout.masked_scale(x, dense, 1 / (1 - p)),
    )
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))  # bits, signed zeros too


def test_fast_dropout_with_and_without_the_kernels_is_the_same(kernels, monkeypatch):
    layer = dropout.FastDropout(0.1).train()
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(native.ENV, switch)
        torch.manual_seed(4)
        x = torch.randn(37, 45).bfloat16().requires_grad_()
        out = layer(x)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_the_build_finds_the_ninja_package_when_path_has_none(monkeypatch):
    import ninja

    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.setenv("PATH", "/nowhere")
    with native._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == str(ninja.BIN_DIR)
    assert os.environ["PATH"] == "/nowhere"


def test_rope_that_the_kernel_does_not_take_runs_the_eager_function(kernels):
    x = torch.randn(1, 5, 2, 8).bfloat16().transpose(1, 2).requires_grad_()
    angle = torch.randn(1, 5, 4).repeat(1, 1, 2)
    cos = angle.cos().bfloat16()
    sin = angle.sin().bfloat16().transpose(1, 2).contiguous().transpose(1, 2)  # other strides
    out, _ = rope.rope(x, x, cos, sin)
    assert type(out.grad_fn).__name__ == "_RopeBackward"


def _node_named(node, name: str):
    """The first autograd node called ``name`` in the graph below ``node``, or None."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        if type(n).__name__ == name:
            return n
        seen.add(n)
        todo.extend(f for f, _ in n.next_functions)
    return None


def _causal_scores(L: int, d: int, g: int = 3, rows: int = 4):
    """A packed layout's q (rows, g*L, d), k (rows, L, d) and its additive causal mask."""
    gen = torch.Generator().manual_seed(L * d)
    q = torch.randn(rows, g * L, d, generator=gen).bfloat16()
    k = torch.randn(rows, L, d, generator=gen).bfloat16()
    hidden = ~torch.ones(L, L, dtype=torch.bool).tril()
    mask = torch.zeros(L, L).masked_fill_(hidden, torch.finfo(torch.bfloat16).min)
    return q, k, mask.bfloat16().repeat(g, 1)[None]


# d 64 and 16: a power-of-two scale; d 128: 1/sqrt(128). L 83: rows longer than one vector.
@pytest.mark.parametrize(("L", "d"), [(83, 64), (40, 16), (7, 128), (1, 64)])
def test_causal_softmax_is_the_masked_softmax(kernels, L, d):
    q, k, mask = _causal_scores(L, d)
    scale = d**-0.5
    scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale).requires_grad_()
    want = torch.softmax(scores, dim=-1)
    raw = torch.bmm(q, k.transpose(1, 2)).requires_grad_()
    got = _CausalSoftmax.apply(raw, scale)
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    (d_want,) = torch.autograd.grad(want, scores, grad)
    d_want = d_want * scale  # baddbmm's backward scales the scores' gradient by alpha
    (d_got,) = torch.autograd.grad(got, raw, grad)
    for g in range(3):  # zeros past the diagonal, as exp(min - max) is in eager
        block = got[:, g * L : (g + 1) * L]
        assert torch.equal(block.triu(1), torch.zeros_like(block))
        assert torch.equal(d_got[:, g * L : (g + 1) * L].triu(1), torch.zeros_like(block))
    if d in (16, 64):  # the same scaled scores; a row's sum may be added in another order
        _close_within_a_rounding(got, want)
        assert (got == want).float().mean() > 0.999
        torch.testing.assert_close(d_got.float(), d_want.float(), rtol=BF16_STEP, atol=1e-6)
    else:  # eager rounds the scaled scores to bf16 first: exp moves by up to |s| * 2**-8
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-3)
        torch.testing.assert_close(d_got.float(), d_want.float(), rtol=2e-2, atol=1e-3)


def test_causal_softmax_never_reads_the_keys_a_query_does_not_see(kernels):
    q, k, _ = _causal_scores(50, 64)
    raw = torch.bmm(q, k.transpose(1, 2))
    poisoned = raw.clone()
    for g in range(3):
        block = poisoned[:, g * 50 : (g + 1) * 50]
        block.masked_fill_(~torch.ones(50, 50, dtype=torch.bool).tril(), float("nan"))
    assert torch.equal(_CausalSoftmax.apply(poisoned, 0.125), _CausalSoftmax.apply(raw, 0.125))


@pytest.mark.parametrize("positions", PACKED_ROWS)
def test_packed_attention_with_and_without_the_kernels_is_the_same(
    kernels, monkeypatch, packed_pass, positions
):
    from tunesmith.train.fastpath import fused_attention

    # The products through torch and the softmax kernel (test_fused_attention.py: the kernel).
    monkeypatch.setattr(fused_attention, "runs", lambda *tensors_and_scale: False)
    out, grads = packed_pass(positions, "1")
    assert _node_named(out.grad_fn, "_CausalSoftmaxBackward") is not None
    eager_out, eager_grads = packed_pass(positions, "0")
    assert _node_named(eager_out.grad_fn, "_CausalSoftmaxBackward") is None
    for got, want in zip((out, *grads), (eager_out, *eager_grads), strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=BF16_STEP, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64])
def test_gather_rows_copies_rows_and_zeros_the_unplaced(kernels, dtype):
    x = torch.arange(40 * 3).view(40, 3).to(dtype)
    source = torch.randint(-1, 40, (3000,), generator=torch.Generator().manual_seed(0))
    got = kernels.gather_rows(x, source)
    want = torch.where((source >= 0)[:, None], x[source.clamp_min(0)], torch.zeros((), dtype=dtype))
    assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.gather_rows(x, torch.tensor([0, 40]))
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.gather_rows(x, torch.tensor([-2]))


# A demo head's width, and vocabularies with a tail after the last full vector (32 bf16 lanes).
@pytest.mark.parametrize("rows,vocab", [(37, 49152), (5, 45), (3, 1)])
def test_softmax_nll_is_the_chunked_eager_step(kernels, rows, vocab):
    from tunesmith.loss.head_ce import softmax_nll_

    torch.manual_seed(0)
    logits = (torch.randn(rows, vocab) * 4).bfloat16()
    targets = torch.randint(0, vocab, (rows,))
    want_grad, got_grad = logits.clone(), logits.clone()
    want = softmax_nll_(want_grad, targets)
    got = kernels.softmax_nll_(got_grad, targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # the sum may add in another order
    _close_within_a_rounding(got_grad, want_grad)
    assert (got_grad.view(torch.int16) == want_grad.view(torch.int16)).float().mean() >= 0.999
    assert (got_grad.float().sum(1)).abs().max() < 0.1  # softmax - onehot sums to ~0 per row


def test_softmax_nll_refuses_targets_outside_the_vocabulary(kernels):
    logits = torch.zeros(2, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="target 8 of row 1 is outside"):
        kernels.softmax_nll_(logits, torch.tensor([0, 8]))
    with pytest.raises(RuntimeError, match="bf16"):
        kernels.softmax_nll_(logits.float(), torch.tensor([0, 1]))


def test_the_fast_head_loss_takes_the_kernel_and_equals_the_reference_step(kernels, monkeypatch):
    from tests.loss.test_head_ce import _head
    from tunesmith.loss.head_ce import head_cross_entropy_sum
    from tunesmith.train.fastpath import fast_head_loss

    class Counting:
        calls = 0

        def softmax_nll_(self, *args):
            self.calls += 1
            return kernels.softmax_nll_(*args)

        def __getattr__(self, name):  # every other kernel: the built one
            return getattr(kernels, name)

    counting = Counting()
    monkeypatch.setattr(native, "kernels", lambda: counting)
    head, h, t = _head(torch.bfloat16, vocab=300, width=48, rows=70)
    ref_h = h.detach().clone().requires_grad_()
    fast = fast_head_loss(head, h, t)
    want = head_cross_entropy_sum(head, ref_h, t)  # the chunked eager softmax step
    assert counting.calls == 1
    fast.backward()
    want.backward()
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=2e-2, atol=1e-3)


def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.double().bfloat16().double()  # a rounding to bf16 of an exact (fp64) value


# (rows, d_in, ranks, widths): a demo q/k/v pass stacked; rows, widths and a rank with tails
# after the last block of four rows, the last vector and the last block of four ranks; two
# branches of their own ranks; one element; for the dot products, columns past a block of 64
# by more and by less than 32 and odd ranks past a block of four; ranks of 41 in all and the
# largest node's 64 (32 pairs).
LORA_SHAPES = [
    (416, 576, [4, 4, 4], [576, 192, 192]),
    (63, 45, [6], [33]),
    (7, 40, [3, 5], [20, 9]),
    (1, 1, [1], [1]),
    (130, 100, [5, 7], [70, 90]),
    (33, 64, [20, 21], [64, 40]),
    (9, 70, [64], [50]),
]
# The LoRA kernels' two vector passes: fp32 FMAs, and AVX512-BF16 dot products where the CPU has
# them (dp_lora.cpp; what such a CPU runs where no AMX does: lora_linear._bf16_dots).
DOTS = pytest.mark.parametrize("bf16_dots", [False, True], ids=["fp32", "bf16-dots"])


def _dots_or_skip(kernels, bf16_dots):
    if bf16_dots and not kernels.dp_ready():
        pytest.skip("no AVX512-BF16 on this CPU")


# On tiles (widths multiples of 32): a demo q/k/v pass (chunks of 128 rows, a last of 32); a
# last chunk of 94 rows (three K blocks, the last of 30 rows); ranks of 40 in all (padded to 64,
# not 16); one row.
TILE_LORA_SHAPES = [
    (416, 576, [4, 4, 4], [576, 192, 192]),
    (350, 96, [3, 5], [32, 64]),
    (70, 64, [16, 16, 8], [64, 32, 96]),
    (1, 32, [1], [32]),
]


@DOTS
@pytest.mark.parametrize("master", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "d_in", "ranks", "widths"), LORA_SHAPES)
def test_lora_products_are_their_formulas_within_a_rounding(
    kernels, rows, d_in, ranks, widths, master, bf16_dots
):
    _dots_or_skip(kernels, bf16_dots)
    _lora_products_are_their_formulas(
        kernels, rows, d_in, ranks, widths, master, tiles=False, bf16_dots=bf16_dots
    )


@pytest.mark.parametrize("master", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "d_in", "ranks", "widths"), TILE_LORA_SHAPES)
def test_lora_backward_on_tiles_is_its_formulas_within_a_rounding(
    amx_kernels, rows, d_in, ranks, widths, master
):
    _lora_products_are_their_formulas(amx_kernels, rows, d_in, ranks, widths, master, tiles=True)


def test_lora_backward_on_tiles_refuses_widths_off_the_tiles(amx_kernels):
    x, h, g = torch.zeros(4, 40).bfloat16(), torch.zeros(4, 2).bfloat16(), torch.zeros(4, 32)
    a, b = torch.zeros(2, 40), torch.zeros(32, 2)
    with pytest.raises(RuntimeError, match="multiples of 32, got 32 and 40"):
        amx_kernels.lora_backward(g.bfloat16(), h, x, [a], [b], [1.0], True, True)


def _lora_products_are_their_formulas(
    kernels, rows, d_in, ranks, widths, master, *, tiles, bf16_dots=True
):
    torch.manual_seed(4)
    n = sum(widths)
    x = torch.randn(rows, d_in).bfloat16()
    a_w = [(torch.randn(k, d_in) * 0.1).to(master) for k in ranks]  # the trained masters
    b_w = [(torch.randn(w, k) * 0.1).to(master) for k, w in zip(ranks, widths, strict=True)]
    scales = [2.0 + 0.37 * i for i in range(len(ranks))]
    a = torch.cat([w.bfloat16() for w in a_w])  # A and sB as the eager path rounds them
    b = torch.block_diag(*[(w * s).bfloat16() for w, s in zip(b_w, scales, strict=True)])
    on_blocks = torch.block_diag(*[torch.ones(w, k) for k, w in zip(ranks, widths, strict=True)])
    out0 = torch.randn(rows, n).bfloat16()
    g = torch.randn(rows, n).bfloat16()

    out = out0.clone()
    h = kernels.lora_forward_(out, x, a_w, b_w, scales, bf16_dots=bf16_dots)
    want_h = _bf16_exact(x.double() @ a.double().t())
    _close_within_a_rounding(h, want_h)
    _close_within_a_rounding(out, out0.double() + h.double() @ b.double().t())
    same_h, h32, sbt = kernels.lora_operands(x, a_w, b_w, scales, bf16_dots=bf16_dots)
    r = sum(ranks)
    assert torch.equal(same_h, h) and torch.equal(h32[:, :r], h) and not h32[:, r:].any()
    assert torch.equal(sbt[:, :r], b) and not sbt[:, r:].any()

    dh, branch, *grads = kernels.lora_backward(
        g, h, x, a_w, b_w, scales, True, tiles, bf16_dots=bf16_dots
    )
    _close_within_a_rounding(dh, g.double() @ b.double())
    _close_within_a_rounding(branch, dh.double() @ a.double())
    d_a = _bf16_exact(dh.double().t() @ x.double())  # from dh as rounded
    d_b = _bf16_exact(g.double().t() @ h.double()) * on_blocks.double()
    r0 = o0 = 0
    for i, (k, w) in enumerate(zip(ranks, widths, strict=True)):
        grad_a, grad_b = grads[i], grads[len(ranks) + i]
        assert grad_a.dtype == grad_b.dtype == master
        assert grad_a.shape == a_w[i].shape and grad_b.shape == b_w[i].shape
        _close_within_a_rounding(grad_a, d_a[r0 : r0 + k])
        _close_within_a_rounding(grad_b, d_b[o0 : o0 + w, r0 : r0 + k] * scales[i])
        r0, o0 = r0 + k, o0 + w
    dh2, no_branch, *same = kernels.lora_backward(
        g, h, x, a_w, b_w, scales, False, tiles, bf16_dots=bf16_dots
    )
    assert no_branch.numel() == 0
    assert all(torch.equal(p, q) for p, q in zip([dh2, *same], [dh, *grads], strict=True))


@DOTS
def test_lora_kernels_round_the_masters_as_the_eager_casts_do(kernels, bf16_dots):
    """A and sB from fp32 masters are rounded to bf16 as ``A.to(bf16)`` and ``(B * s).to(bf16)``
    round them, and a gradient is its bf16 sum widened, then scaled in fp32: with one row, one
    input and rank one, every product but ``g sB`` is a single term, so bit for bit."""
    _dots_or_skip(kernels, bf16_dots)
    torch.manual_seed(5)
    x = torch.randn(1, 1).bfloat16()
    a_w, b_w, s = [torch.randn(1, 1)], [torch.randn(3, 1)], 1.7
    out = torch.zeros(1, 3).bfloat16()
    h = kernels.lora_forward_(out, x, a_w, b_w, [s], bf16_dots=bf16_dots)
    assert torch.equal(h, x @ a_w[0].bfloat16().t())
    assert torch.equal(out, h @ (b_w[0] * s).bfloat16().t())
    g = torch.randn(1, 3).bfloat16()
    dh, _, grad_a, grad_b = kernels.lora_backward(
        g, h, x, a_w, b_w, [s], False, bf16_dots=bf16_dots
    )
    assert torch.equal(grad_a, (dh.t() @ x).float())
    assert torch.equal(grad_b, (g.t() @ h).float().mul_(s))


def test_lora_kernels_refuse_shapes_that_do_not_pair_up(kernels):
    x, a, b = (torch.zeros(shape).bfloat16() for shape in ((4, 8), (2, 8), (6, 2)))
    with pytest.raises(RuntimeError, match=r"output must be \(4, 6\)"):
        kernels.lora_forward_(torch.zeros(4, 5).bfloat16(), x, [a], [b], [1.0])
    with pytest.raises(RuntimeError, match=r"B must be \(width, 2\)"):
        kernels.lora_forward_(torch.zeros(4, 6).bfloat16(), x, [a], [b.t().contiguous()], [1.0])
    with pytest.raises(RuntimeError, match=r"A must be \(rank, 8\)"):
        kernels.lora_backward(torch.zeros(4, 6).bfloat16(), torch.zeros(4, 2).bfloat16(), x,
                              [a[:, :4].contiguous()], [b], [1.0], True)  # fmt: skip
    with pytest.raises(RuntimeError, match="pair up"):
        kernels.lora_forward_(torch.zeros(4, 6).bfloat16(), x, [a], [b], [1.0, 2.0])
    wide = torch.zeros(native.LORA_MAX_RANK + 1, 8)
    with pytest.raises(RuntimeError, match=f"above {native.LORA_MAX_RANK}"):
        kernels.lora_forward_(torch.zeros(4, 6).bfloat16(), x, [wide],
                              [torch.zeros(6, native.LORA_MAX_RANK + 1)], [1.0])  # fmt: skip
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        kernels.lora_forward_(torch.zeros(4, 6).bfloat16(), x.float(), [a], [b], [1.0])
    with pytest.raises(RuntimeError, match="contiguous fp32 or bf16"):
        kernels.lora_forward_(torch.zeros(4, 6).bfloat16(), x, [a.half()], [b], [1.0])


def test_bf16_dots_is_the_cpus_avx512_bf16_and_described_names_the_path(kernels, monkeypatch):
    from tunesmith.precision import cpu_info

    assert native.bf16_dots() == ("avx512_bf16" in cpu_info()[1]) == bool(kernels.dp_ready())
    monkeypatch.setattr(native, "amx", lambda: True)
    assert native.described() == "on, AMX tiles"
    monkeypatch.setattr(native, "amx", lambda: False)
    monkeypatch.setattr(native, "bf16_dots", lambda: True)
    assert native.described() == "on, AVX512-BF16 dot products"
    monkeypatch.setattr(native, "bf16_dots", lambda: False)
    assert native.described() == "on"
    monkeypatch.setenv(native.ENV, "0")
    assert native.described() == f"off ({native.ENV}=0)"
