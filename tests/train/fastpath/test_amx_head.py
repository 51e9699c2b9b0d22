"""The vocabulary head and its cross-entropy on AMX tiles (``native/amx_head.cpp``) against an
fp64 reference and against torch's bf16 path (the head's products and the softmax kernel)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.loss.head_ce import head_cross_entropy_sum
from tunesmith.train.fastpath import fast_head_loss, native, row_split, tile_head

# (rows, vocab, hidden): one row; rows not a multiple of 32 and a vocabulary whose last chunk
# is short; more rows than one block (256); a vocabulary below one chunk; a wide hidden size;
# a vocabulary too narrow for a slice per thread (one slice, its row blocks shared out).
SHAPES = [(1, 1000, 64), (45, 1000, 96), (300, 2304, 64), (33, 100, 32), (40, 515, 256),
          (300, 200, 64)]  # fmt: skip


def _inputs(rows, vocab, hidden, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(rows, hidden, generator=gen) * 2).bfloat16()
    weight = (torch.randn(vocab, hidden, generator=gen) * 0.3).bfloat16()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[0] = vocab - 1  # a target in the last, short chunk
    return h, weight, targets


def _reference(h, weight, targets):
    """fp64 per-row NLLs and the gradient of their sum for h."""
    logits = h.double() @ weight.double().T
    nll = torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None])[:, 0]
    dh = torch.softmax(logits, -1) @ weight.double() - weight.double()[targets]
    return nll, dh


def _head(weight):
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    return head


def _torch_path(h, weight, targets):
    """The summed loss and h's gradient through the products and the softmax."""
    h = h.clone().requires_grad_()
    loss = head_cross_entropy_sum(_head(weight), h, targets)
    loss.backward()
    return loss.detach(), h.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_is_at_least_as_close_to_fp64_as_torch_path(amx_kernels, shape, threads):
    h, weight, targets = _inputs(*shape)
    ref_nll, ref_dh = _reference(h, weight, targets)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # 2: the vocabulary split across threads, then combined
    try:
        nll, dh = amx_kernels.amx_head_nll(h, weight, targets)
    finally:
        torch.set_num_threads(before)
    assert nll.dtype == torch.float32 and dh.dtype == torch.bfloat16
    assert (nll.double() - ref_nll).abs().max() < 1e-4
    loss, grad = _torch_path(h, weight, targets)
    assert (nll.double().sum() - ref_nll.sum()).abs() <= (
        loss.double() - ref_nll.sum()
    ).abs() + 1e-4
    err = (dh.double() - ref_dh).abs().max()
    assert err <= (grad.double() - ref_dh).abs().max() * 1.05 + 1e-6
    assert err < 0.01 * ref_dh.abs().max()


def test_fast_head_loss_takes_the_kernel_and_scales_the_gradient(amx_kernels):
    h, weight, targets = _inputs(70, 1000, 64, seed=1)
    head = _head(weight)
    assert tile_head.on_tiles(h, weight)
    x = h.clone().requires_grad_()
    loss = fast_head_loss(head, x, targets)
    assert type(loss.grad_fn.next_functions[0][0]).__name__ == "_FusedHeadNllBackward"
    (loss * 3.0).backward()
    ref_nll, ref_dh = _reference(h, weight, targets)
    assert abs(loss.item() - ref_nll.sum().item()) < 1e-3
    assert torch.allclose(x.grad.double(), 3.0 * ref_dh, atol=0.01 * 3 * ref_dh.abs().max().item())
    with row_split.through_torch():  # the bench's recorder of products sees torch's path
        assert not tile_head.on_tiles(h, weight)


def test_kernel_refuses_bad_inputs(amx_kernels):
    h, weight, targets = _inputs(8, 200, 64)
    with pytest.raises(RuntimeError, match="target 3 is 200, outside the vocabulary"):
        bad = targets.clone()
        bad[3] = 200
        amx_kernels.amx_head_nll(h, weight, bad)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        w = weight[:, :48].contiguous()
        amx_kernels.amx_head_nll(h[:, :48].contiguous(), w, targets)
    with pytest.raises(RuntimeError, match="bf16"):
        amx_kernels.amx_head_nll(h.float(), weight, targets)
    with pytest.raises(RuntimeError, match="do not match"):
        amx_kernels.amx_head_nll(h, weight, targets[:5])


def test_on_tiles_needs_bf16_a_hidden_size_of_32s_and_the_kernels(amx_kernels, monkeypatch):
    h, weight, _ = _inputs(4, 64, 64)
    assert tile_head.on_tiles(h, weight)
    assert not tile_head.on_tiles(h.float(), weight.float())
    assert not tile_head.on_tiles(h[:, :48], weight[:, :48])
    monkeypatch.setenv(native.ENV, "0")
    assert not tile_head.on_tiles(h, weight)
