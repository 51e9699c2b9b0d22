"""The frozen head and its cross-entropy as one node: the reference's loss and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from tunesmith.loss.chunked_ce import CHUNK, cross_entropy_sum, token_nll
from tunesmith.loss.head_ce import (
    ROW_BUCKET,
    HeadKernels,
    _HeadNll,
    fuses,
    head_cross_entropy_sum,
    head_token_nll,
    softmax_nll_,
)

ROWS = 2 * CHUNK + 7  # a last chunk shorter than CHUNK


def _head(dtype, vocab=300, width=48, seed=0, rows=ROWS):
    torch.manual_seed(seed)
    head = nn.Linear(width, vocab, bias=False).to(dtype)
    head.weight.requires_grad_(False)
    h = torch.randn(rows, width, dtype=dtype, requires_grad=True)
    return head, h, torch.randint(0, vocab, (rows,))


def test_fp64_loss_and_gradient_equal_the_reference_with_a_per_row_scale():
    head, h, t = _head(torch.float64)
    scale = torch.rand(ROWS, dtype=torch.float64)  # per-row upstream gradient
    ref_h = h.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_h @ head.weight.t(), t, reduction="none")
    (ref * scale).sum().backward()
    nll = _HeadNll.apply(h, head.weight, t, torch.mm, softmax_nll_)
    (nll * scale.float()).sum().backward()
    torch.testing.assert_close(nll.double(), ref, rtol=1e-6, atol=1e-6)  # fp32 NLLs
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-6, atol=1e-7)


def test_bf16_same_loss_and_gradient_within_one_rounding_of_the_chunked_path():
    head, h, t = _head(torch.bfloat16, vocab=4096, width=64)
    assert fuses(head, h)
    chunked_h = h.detach().clone().requires_grad_()
    exact_h = h.detach().double().requires_grad_()
    fused = head_cross_entropy_sum(head, h, t)
    chunked = cross_entropy_sum(head(chunked_h), t)
    exact = F.cross_entropy(exact_h @ head.weight.double().t(), t, reduction="sum")
    (fused / ROWS).backward()
    (chunked / ROWS).backward()
    (exact / ROWS).backward()
    assert fused.item() == chunked.item()  # the same log-softmax of the same logits

    def error(g):
        return ((g.double() - exact_h.grad).norm() / exact_h.grad.norm()).item()

    # One bf16 rounding more than the chunked path (the scaled product's output).
    assert error(h.grad) < 2.0 * error(chunked_h.grad) < 0.02


def test_eval_and_heads_it_does_not_know_keep_the_chunked_path():
    head, h, t = _head(torch.bfloat16)
    with torch.no_grad():
        assert not fuses(head, h)
        assert head_cross_entropy_sum(head, h, t) == cross_entropy_sum(head(h), t)
    fp32_head, fp32_h, _ = _head(torch.float32)
    assert not fuses(fp32_head, fp32_h)  # nothing to save: F.cross_entropy is fp32 already
    trained = _head(torch.bfloat16)[0].requires_grad_(True)
    assert not fuses(trained, h)  # full fine-tuning trains the head: its weight needs a gradient
    biased = nn.Linear(48, 300).to(torch.bfloat16).requires_grad_(False)
    assert not fuses(biased, h)


def test_a_lora_wrapped_head_keeps_the_chunked_path():
    h = torch.randn(ROWS, 48, dtype=torch.bfloat16, requires_grad=True)
    lora = get_peft_model(
        nn.Sequential(nn.Linear(48, 300, bias=False)),
        LoraConfig(r=2, target_modules=["0"]),
    ).to(torch.bfloat16)
    assert not fuses(lora.base_model.model[0], h)


@pytest.mark.parametrize("rows", [1, CHUNK, CHUNK + 1])
def test_row_counts_at_the_chunk_edges(rows):
    head, h, t = _head(torch.float64)
    h, t = h.detach()[:rows].requires_grad_(), t[:rows]
    ref_h = h.detach().clone().requires_grad_()
    F.cross_entropy(ref_h @ head.weight.t(), t, reduction="sum").backward()
    _HeadNll.apply(h, head.weight, t, torch.mm, softmax_nll_).sum().backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-6, atol=1e-7)


def test_token_nlls_for_the_preference_log_probs():
    head, h, t = _head(torch.bfloat16, vocab=4096, width=64)
    chunked_h = h.detach().clone().requires_grad_()
    weights = torch.rand(ROWS)  # a preference loss weighs each token's log-prob differently
    fused = head_token_nll(head, h, t)
    chunked = token_nll(head(chunked_h), t)
    assert torch.equal(fused, chunked)
    (fused * weights).sum().backward()
    (chunked * weights).sum().backward()
    torch.testing.assert_close(h.grad, chunked_h.grad, rtol=0.02, atol=1e-4)


def test_never_under_a_distributed_engine(monkeypatch):
    head, h, _ = _head(torch.bfloat16)
    assert fuses(head, h)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    assert not fuses(head, h)  # FSDP/DeepSpeed may hold the weight sharded outside head(h)


def test_a_pass_without_trained_rows_and_under_autocast():
    head, h, t = _head(torch.bfloat16)
    empty = h.detach()[:0].requires_grad_()
    loss = head_cross_entropy_sum(head, empty, t[:0])
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 48)
    auto_h = h.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = head_cross_entropy_sum(head, auto_h, t)
    plain = head_cross_entropy_sum(head, h, t)
    under.backward()
    plain.backward()
    assert under.item() == plain.item() and torch.equal(auto_h.grad, h.grad)


def test_the_products_run_on_a_bucketed_row_count():
    head, h, t = _head(torch.bfloat16)
    shapes = []

    def mm(a, b):
        shapes.append(tuple(a.shape))
        return torch.mm(a, b)

    head_cross_entropy_sum(head, h, t, HeadKernels(mm=mm)).backward()
    padded = -(-ROWS // ROW_BUCKET) * ROW_BUCKET
    assert padded != ROWS and shapes == [(padded, 48), (padded, 300)]
    assert h.grad.shape == (ROWS, 48)


def test_token_nlls_without_gradients_take_the_given_products_and_softmax():
    """The preference reference's scoring (no gradient): the logits by ``mm`` on a bucketed row
    count and ``nll_`` over them, the same NLLs as the chunked path's."""
    head, h, t = _head(torch.bfloat16, vocab=4096, width=64)
    shapes, softmaxes = [], []

    def mm(a, b):
        shapes.append(tuple(a.shape))
        return torch.mm(a, b)

    def nll_(logits, targets):
        softmaxes.append(tuple(logits.shape))
        return softmax_nll_(logits, targets)

    with torch.no_grad():
        kernels = HeadKernels(mm=mm, nll_=nll_)
        got = head_token_nll(head, h, t, kernels)
        want = token_nll(head(h), t)
        fp32_head, fp32_h, fp32_t = _head(torch.float32)
        assert torch.equal(
            head_token_nll(fp32_head, fp32_h, fp32_t, kernels),
            token_nll(fp32_head(fp32_h), fp32_t),
        )
    assert torch.equal(got, want)
    padded = -(-ROWS // ROW_BUCKET) * ROW_BUCKET
    assert shapes == [(padded, 64)] and softmaxes == [(ROWS, 4096)]  # the fp32 head: untouched
