"""The frozen products on AMX tiles (``native/amx_gemm.cpp``) against fp32 products."""

from __future__ import annotations

import pytest
import torch

from tunesmith.train.fastpath import native

BF16_STEP = 2.0**-7  # one bf16 rounding, relative


@pytest.fixture
def kernels(amx_kernels):
    return amx_kernels


def _operands(m, k, n, transposed, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).bfloat16()
    if transposed:  # a linear layer's x W^T: b is the transpose of a row-major W
        return a, torch.randn(n, k, generator=g).bfloat16().t()
    return a, torch.randn(k, n, generator=g).bfloat16()  # its input gradient g W


def _within_a_rounding(got, want):
    scale = want.abs().clamp_min(1e-2)
    assert float(((got.float() - want) / scale).abs().max()) <= 1.01 * BF16_STEP


# A training pass's shapes (qualifying products), tails of 1-31 rows, one row, one tile.
SHAPES = [(416, 576, 192), (480, 1536, 576), (37, 64, 96), (1, 32, 32), (50, 192, 576)]


@pytest.mark.parametrize("transposed", [True, False], ids=["W.t()", "row-major"])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_products_are_the_fp32_product_rounded_once(kernels, m, k, n, transposed):
    a, b = _operands(m, k, n, transposed)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
    kernels.amx_mm_(out, a, b, False)
    _within_a_rounding(out, a.float() @ b.float())


@pytest.mark.parametrize("transposed", [True, False], ids=["W.t()", "row-major"])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_accumulating_adds_to_out_before_the_one_rounding(kernels, m, k, n, transposed):
    a, b = _operands(m, k, n, transposed)
    c = torch.randn(m, n, generator=torch.Generator().manual_seed(1)).bfloat16() * 4
    out = c.clone()
    kernels.amx_mm_(out, a, b, True)
    _within_a_rounding(out, c.float() + a.float() @ b.float())


def test_row_blocks_of_larger_tensors_are_read_and_written_in_place(kernels):
    """Views with a row stride of their own (row blocks) for a, out and W, as row_split cuts."""
    a_all, b = _operands(96, 64, 64, transposed=True)
    w_all = torch.randn(64, 128).bfloat16()  # W's rows of 128, the first 64 columns used
    out_all = torch.zeros(96, 96, dtype=torch.bfloat16)
    a, w, out = a_all[16:80], w_all[:, :64], out_all[16:80, 32:]
    kernels.amx_mm_(out, a, w.t(), False)
    _within_a_rounding(out, a.float() @ w.float().t())
    assert out_all[:16].eq(0).all() and out_all[80:].eq(0).all() and out_all[:, :32].eq(0).all()


def test_a_large_output_written_past_the_cache_equals_one_written_through_it(kernels):
    """Outputs over 1 MiB with 64-byte aligned rows take non-temporal stores; a view a few
    elements in (unaligned) takes ordinary ones: the same values, bit for bit."""
    a, b = _operands(480, 576, 1536, transposed=True)
    streamed = torch.empty(480, 1536, dtype=torch.bfloat16)
    assert streamed.data_ptr() % 64 == 0 and streamed.numel() * 2 > 1 << 20
    kernels.amx_mm_(streamed, a, b, False)
    wider = torch.zeros(480, 1536 + 16, dtype=torch.bfloat16)
    unaligned = wider[:, 16:]
    assert unaligned.data_ptr() % 64 != 0
    kernels.amx_mm_(unaligned, a, b, False)
    assert torch.equal(streamed, unaligned) and wider[:, :16].eq(0).all()
    _within_a_rounding(streamed, a.float() @ b.float())


@pytest.mark.parametrize("accumulate", [False, True], ids=["new", "accumulating"])
@pytest.mark.parametrize("transposed", [True, False], ids=["W.t()", "row-major"])
@pytest.mark.parametrize(
    ("m", "k", "n", "k2"), [(37, 576, 192, 32), (480, 64, 1536, 64), (1, 32, 32, 32)]
)
def test_a_low_rank_extension_is_summed_with_the_product_before_the_one_rounding(
    kernels, m, k, n, k2, transposed, accumulate
):
    """``a @ b + a2 @ b2t.T`` (a LoRA branch ``h (s B)^T``, its rank padded to k2): tails of rows,
    both layouts of b, an output large enough for non-temporal stores."""
    a, b = _operands(m, k, n, transposed)
    g = torch.Generator().manual_seed(2)
    a2 = torch.randn(m, k2, generator=g).bfloat16()
    b2t = torch.randn(n, k2, generator=g).bfloat16()
    c = torch.randn(m, n, generator=g).bfloat16() if accumulate else torch.zeros(m, n)
    out = c.bfloat16().clone() if accumulate else torch.full((m, n), float("nan")).bfloat16()
    kernels.amx_mm_(out, a, b, accumulate, a2, b2t)
    _within_a_rounding(out, c.float() + a.float() @ b.float() + a2.float() @ b2t.float().t())


def test_refuses_what_it_does_not_handle(kernels):
    a, b = _operands(64, 64, 64, transposed=False)
    out = torch.empty(64, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="multiples of 32"):
        kernels.amx_mm_(out[:, :48], a, b[:, :48], False)
    with pytest.raises(RuntimeError, match="2-D bf16"):
        kernels.amx_mm_(out, a.float(), b, False)
    with pytest.raises(RuntimeError, match="do not match"):
        kernels.amx_mm_(out[:32], a, b, False)
    with pytest.raises(RuntimeError, match="unit column stride"):
        kernels.amx_mm_(out, a.t().contiguous().t(), b, False)
    with pytest.raises(RuntimeError, match="row-major"):
        kernels.amx_mm_(out, a, torch.randn(64, 128).bfloat16()[:, ::2], False)
    h = torch.zeros(64, 32, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="go together"):
        kernels.amx_mm_(out, a, b, False, h, None)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.amx_mm_(out, a, b, False, h[:, :16].contiguous(), h[:, :16].contiguous())
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.amx_mm_(out, a, b, False, h, torch.zeros(32, 64, dtype=torch.bfloat16).t())


def test_an_isa_cap_below_amx_keeps_the_tiles_off(kernels, monkeypatch):
    """Under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` (an AVX512-BF16 CPU's emulation) the
    kernel stays off, as oneDNN's do."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    native.amx.cache_clear()
    try:
        assert native.amx() is False
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        native.amx.cache_clear()
