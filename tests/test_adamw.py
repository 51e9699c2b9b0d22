"""The AdamW kernel: fused on one CPU process, with the same updates as foreach."""

import torch

from tests.tiny import make_tokenizer
from tests.train.test_loop import _loop, _lora_model
from tunesmith.adamw import adamw_kernel


def test_fused_only_for_a_single_cpu_process():
    assert adamw_kernel("cpu", distributed=False) == {"fused": True}
    assert adamw_kernel("cpu", distributed=True) == {"foreach": True}
    assert adamw_kernel("cuda", distributed=False) == {"foreach": True}


def test_the_cpu_loop_builds_the_fused_kernel(tmp_path):
    loop = _loop(_lora_model(), make_tokenizer(), tmp_path, steps=1)
    assert loop.optimizer.defaults["fused"] is True
    assert not loop.optimizer.defaults["foreach"]


def test_fused_and_foreach_give_the_same_weights():
    torch.manual_seed(0)
    shapes = [(8, 64), (64, 8), (8, 96), (96, 8), (3,)]
    a = [torch.randn(s, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_() for p in a]
    fused = torch.optim.AdamW(a, lr=1e-2, weight_decay=0.1, fused=True)
    foreach = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, foreach=True)
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        foreach.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
