"""Chunked cross-entropy against its reference, F.cross_entropy on the fp32 logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.loss import chunked_ce
from tunesmith.loss.chunked_ce import chunked_cross_entropy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 31, 32, 70])  # fewer, exactly, and not a multiple of CHUNK
def test_loss_and_gradient_equal_the_fp32_reference(dtype, rows):
    assert chunked_ce.CHUNK == 32
    g = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, 1000, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (rows,), generator=g)
    ref = F.cross_entropy(logits.float(), targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref * 0.5, logits)
    got = chunked_cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(got * 0.5, logits)
    assert got.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    # Both compute the gradient in fp32 and round it once to the logits' dtype: at most one
    # rounding step apart (softmax vs exp of log-softmax differ in the last fp32 bits).
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(grad, ref_grad, rtol=2 * ulp, atol=1e-7)


def test_no_rows_is_zero_and_trains_nothing():
    logits = torch.zeros(0, 10, dtype=torch.bfloat16, requires_grad=True)
    loss = chunked_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 10)


@pytest.mark.parametrize("rows", [5, 70])
def test_per_row_nll_and_its_weighted_gradient_equal_the_reference(rows):
    """The preference log-probs' path: per-token NLLs, each row's gradient weighted differently."""
    from tunesmith.loss.chunked_ce import chunked_token_nll

    g = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, 1000, generator=g) * 4).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 1000, (rows,), generator=g)
    weights = torch.randn(rows, generator=g)
    ref = F.cross_entropy(logits.float(), targets, reduction="none")
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    got = chunked_token_nll(logits, targets)
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    assert got.shape == (rows,) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=2 * 2.0**-8, atol=1e-6)
