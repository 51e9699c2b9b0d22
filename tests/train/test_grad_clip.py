"""The loop's gradient clip against torch's clip_grad_norm_ (train/grad_clip.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.train import grad_clip
from tunesmith.train.fastpath import native

# Sizes with a tail after the last pair of fp32 vectors, a single element, a demo LoRA B.
SHAPES = [(4, 576), (1536, 4), (7, 3), (1,), (33,), (2, 17, 5)]


@pytest.fixture(scope="module")
def kernels():
    if native.buildable() is not None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    native.build()
    return native.kernels()


def _params(scale: float, dtype=torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in SHAPES]
    for p in params:
        p.grad = (torch.randn(p.shape) * scale).to(dtype)
    params.append(torch.nn.Parameter(torch.zeros(3)))  # no gradient: left out, as torch does
    return params


def _torch_clip(params, max_norm):
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(copies, params, strict=True):
        c.grad = None if p.grad is None else p.grad.clone()
    return float(torch.nn.utils.clip_grad_norm_(copies, max_norm)), copies


def test_clipped_gradients_equal_torchs_within_fp32_rounding(kernels):
    params = _params(scale=1.0)
    want_norm, want = _torch_clip(params, 1.0)
    norm = grad_clip.clip_grad_norm(params, 1.0)
    assert isinstance(norm, float) and want_norm > 1.0
    assert norm == pytest.approx(want_norm, rel=1e-6)
    for p, w in zip(params[:-1], want[:-1], strict=True):
        torch.testing.assert_close(p.grad, w.grad, rtol=4e-7, atol=0)  # the scale: an ulp
    clipped = math.sqrt(sum(float(p.grad.double().square().sum()) for p in params[:-1]))
    assert clipped == pytest.approx(1.0, rel=1e-5)


def test_gradients_under_the_limit_are_not_touched(kernels):
    params = _params(scale=1e-3)
    before = [p.grad.clone() for p in params[:-1]]
    want_norm, want = _torch_clip(params, 1.0)
    norm = grad_clip.clip_grad_norm(params, 1.0)
    assert norm == pytest.approx(want_norm, rel=1e-6) and norm < 1.0
    for p, b, w in zip(params[:-1], before, want[:-1], strict=True):
        assert torch.equal(p.grad, b) and torch.equal(p.grad, w.grad)  # torch scales by 1.0


@pytest.mark.parametrize("bad", ["bf16", "transposed"])
def test_other_gradients_take_torchs_clip(kernels, bad):
    params = _params(scale=1.0)
    if bad == "bf16":
        params[1] = torch.nn.Parameter(params[1].detach().bfloat16())  # a bf16 weight, its grad
        params[1].grad = torch.randn(params[1].shape).bfloat16()
    else:
        params[0].grad = torch.randn(576, 4).t()  # the shape, not contiguous
    assert kernels.grad_sum_squares([p.grad for p in params if p.grad is not None]) == -1.0
    want_norm, want = _torch_clip(params, 1.0)
    norm = grad_clip.clip_grad_norm(params, 1.0)
    assert isinstance(norm, torch.Tensor) and float(norm) == want_norm
    for p, w in zip(params[:-1], want[:-1], strict=True):
        assert torch.equal(p.grad, w.grad)


def test_kernels_off_take_torchs_clip(kernels, monkeypatch):
    monkeypatch.setenv(native.ENV, "0")
    params = _params(scale=1.0)
    want_norm, want = _torch_clip(params, 1.0)
    assert float(grad_clip.clip_grad_norm(params, 1.0)) == want_norm
    for p, w in zip(params[:-1], want[:-1], strict=True):
        assert torch.equal(p.grad, w.grad)


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_a_non_finite_norm_is_returned_and_leaves_the_gradients(kernels, value):
    params = _params(scale=1.0)
    params[2].grad[0, 0] = value
    before = [p.grad.clone() for p in params[:-1]]
    norm = grad_clip.clip_grad_norm(params, 1.0)
    assert not math.isfinite(norm)
    for p, b in zip(params[:-1], before, strict=True):
        assert torch.equal(
            p.grad,
            b,
        ) or torch.equal(p.grad.isnan(), b.isnan())


def test_no_gradient_at_all():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert float(grad_clip.clip_grad_norm(params, 1.0)) == 0.0


def test_the_loops_clip_per_device():
    cpu = torch.device("cpu")
    assert grad_clip.clipper(cpu, distributed=False) is grad_clip.clip_grad_norm
    assert grad_clip.clipper(cpu, distributed=True) is torch.nn.utils.clip_grad_norm_
    assert grad_clip.clipper(torch.device("cuda"), distributed=False) is (
        torch.nn.utils.clip_grad_norm_
    )
