"""RMSNorm for CPU training in three passes over the activations instead of six.

transformers' Llama-family ``RMSNorm`` is written as separate eager ops: cast to fp32, ``pow``,
``mean``, multiply, cast back, multiply by the weight; autograd then replays each of them
backward, with more casts. On the demo (SmolLM2-135M, 61 norms, bf16 activations, 2 CPU
threads) that made a norm's forward + backward cost ~0.45 ms per 261-token pass, ~6% of a step.
Here the forward is ``vector_norm`` (reads bf16, accumulates fp32), one ``mul`` that rounds
``x * r`` to the input dtype exactly where transformers rounds it, and the weight multiply;
the backward is the closed form ``dx = r * (gy - x * r^2 * mean(gy * x))`` with ``gy = g * w``,
computed in fp32 from the saved bf16 input and ``r`` (one value per row). Measured -16% to
-34% per norm (forward identical to transformers', bit for bit; input gradients within one
bf16 rounding, since transformers rounds ``g * w`` to bf16 before its fp32 backward and this
does not). Where tunesmith's CPU kernels are built (:mod:`~tunesmith.train.fastpath.native`),
a bf16 norm with a frozen weight (every norm under the LoRA family) runs the same formulas in
one pass each way instead: 0.08 ms against 0.32 ms forward + backward on a 416 x 576 pass,
values within one bf16 rounding (the row's sum of squares is added in another order).

Every elementwise op runs on operands of one dtype: the input is upcast to fp32 once per
direction and the fp32 temporaries are updated in place. A mixed bf16 x fp32 op would give
the same values, but on CPU it first copies its bf16 operand to a new fp32 tensor, one
hidden pass and allocation per op (most of the norm's time on an AMX CPU, where the
surrounding matmuls are fast).

Which norms are changed is decided by what they compute, not by their name or source text:
:func:`why_not_llama_formula` runs a class's own ``forward`` and the fused one on a small
random input (random weight, fp32) and compares them. Llama, Mistral, Qwen2/3 and other models
copied from Llama pass; Gemma's ``(1 + weight)`` variant, LayerNorm-style norms and anything
that fails the probe keep their own code, and :func:`install` says why. The module keeps its
class (through a subclass), its ``weight`` parameter and its state-dict keys; the reference
path is the original ``forward`` (``tests/train/fastpath/test_rmsnorm.py`` compares them).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from tunesmith.train.fastpath import native
from tunesmith.train.fastpath.patch import Patch, fast_subclass, swap_probed_classes


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the dtypes below are deliberate
            xf = x.float()  # the one upcast (x itself when x is fp32)
            ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
            r = ms.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
            # fp32 product, rounded once to x's dtype (in place when x was upcast).
            y = (xf.mul_(r) if xf is not x else xf * r).to(x.dtype)
        ctx.save_for_backward(x, r, weight, y if weight.requires_grad else None)
        return weight * y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, r, weight, y = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * y).reshape(-1, y.shape[-1]).sum(0, dtype=torch.float32)
            grad_w = grad_w.to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gy = grad.float()
            # In place only on a fresh upcast copy: an fp32 ``grad`` is autograd's tensor.
            gy = gy.mul_(weight.float()) if gy is not grad else gy * weight.float()
            xf = x.float()
            c = (gy * xf).mean(-1, keepdim=True).mul_(r).mul_(r)
            gy.addcmul_(xf, c, value=-1.0)  # gy - x * r^2 * mean(gy * x)
            grad_x = gy.mul_(r).to(x.dtype)
        return grad_x, grad_w, None


class _NativeRMSNorm(torch.autograd.Function):
    """:class:`_RMSNorm` for bf16 with a frozen weight, one pass each way in tunesmith's CPU
    kernels (:mod:`~tunesmith.train.fastpath.native`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        y, r = native.kernels().rms_norm_forward(x, weight.contiguous(), eps)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        kernels = native.kernels()
        return kernels.rms_norm_backward(grad.contiguous(), x, weight.contiguous(), r), None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)`` as transformers' LlamaRMSNorm
    (in tunesmith's CPU kernels for bf16 with a frozen weight, where they are built)."""
    if not weight.requires_grad and native.runs_on(x, weight):
        return _NativeRMSNorm.apply(x, weight, eps)
    return _RMSNorm.apply(x, weight, eps)


def _fast_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


_PROBE_ROWS = 4
_PROBE_TOL = dict(rtol=1e-5, atol=1e-6)  # fp32 rounding; another formula differs by O(1)


def why_not_llama_formula(module: nn.Module) -> str | None:
    """Why ``module``'s class does not compute the Llama formula; None when it does.

    Runs the class's ``forward`` on a copy of ``module`` with a random weight (so a
    ``(1 + weight)`` variant cannot hide behind a weight of ones) and compares it in fp32 with
    :func:`rms_norm`.
    """
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return "it has no 1-D weight"
    if not isinstance(eps, float):
        return "it has no float variance_epsilon"
    gen = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(module).float().to("cpu")
    with torch.no_grad():
        probe.weight.copy_(torch.randn(weight.shape, generator=gen).add_(1.0))
        x = torch.randn((_PROBE_ROWS, weight.shape[0]), generator=gen) * 3
        try:
            want = type(module).forward(probe, x)
        except Exception as exc:  # noqa: BLE001 - any failure means: leave this class alone
            return f"its forward failed on a probe input ({type(exc).__name__})"
        got = rms_norm(x, probe.weight, eps)
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return "its forward returns something else than one tensor of the input's shape"
    if not torch.allclose(want.float(), got, **_PROBE_TOL):
        diff = float((want.float() - got).abs().max())
        return f"its forward is not the Llama formula (probe differs by up to {diff:.3g})"
    return None


@functools.cache
def _fast_class(cls: type) -> type:
    """``cls`` with this path's forward (:func:`~tunesmith.train.fastpath.patch.fast_subclass`)."""
    return fast_subclass(cls, _fast_forward, globals())


def _candidates(model: nn.Module) -> dict[type, list[nn.Module]]:
    """RMSNorm-named modules by class, excluding those already fused."""
    found: dict[type, list[nn.Module]] = {}
    for module in model.modules():
        cls = type(module)
        if cls.__name__.endswith("RMSNorm") and cls.forward is not _fast_forward:
            found.setdefault(cls, []).append(module)
    return found


def install(model: nn.Module) -> Patch:
    """Give every RMSNorm that computes the Llama formula the fused forward.

    Each RMSNorm-named class is probed once (:func:`why_not_llama_formula`); the patch says which
    classes failed and why. ``undo`` gives every changed module its original class back.
    """
    return swap_probed_classes(
        _candidates(model), why_not_llama_formula, _fast_class,
        none="the model has no RMSNorm module left to fuse",
    )  # fmt: skip
