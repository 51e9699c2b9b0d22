"""A DoRA projection on the LoRA node: the branch fused with its frozen base, the magnitude as
one column scale, and the weight's norm computed once per update of the adapter.

peft's DoRA (``DoraLinearVariant``, Liu et al. 2024, Eq. 5) computes, per call,
``m / ||W + s B A||`` from the whole ``(d_out, d_in)`` weight: it builds ``B A`` by running an
identity matrix of ``d_in`` rows through the branch, adds it to ``W`` and takes each row's norm,
then adds ``(c - 1) base + c s B A x`` to the base's output over ``(tokens, d_out)`` in fp32.
On the demo (every projection adapted, 2-core AMD EPYC) a step took 1.88x LoRA's time, in
those per-call passes over the weights and its fp32 branch (benchmarks/RESULTS.md, "DoRA on the
LoRA node"). Without dropout (peft then reuses the base's output: ``result + (c - 1) result +
c s B A x``) that is ``out = c (x Wᵀ + s x Aᵀ Bᵀ) + bias`` with ``c = m / n``, and here:

- the product and branch are :class:`~tunesmith.train.fastpath.lora_linear.LoraLinears`
  (one node, tunesmith's kernels), and :class:`DoraScale` scales its output by ``c`` and adds
  the bias; its backward gives the LoRA node ``g c`` and the magnitude ``sum_t g y / n``;
- the norm ``n`` (no gradient: peft detaches it, as the paper's Section 4.3 does) comes from
  :class:`~tunesmith.methods.dora_norm.WeightNorm`: ``||W_j||^2 + 2 s <B_j, (W Aᵀ)_j> + s^2
  B_j (A Aᵀ) B_jᵀ``, one ``(d_out, r)`` product a projection instead of passes over ``(d_out,
  d_in)``; ``||W_j||`` once per run, the rest once per optimizer step (the weights' version
  counters say when), rounded to the compute dtype where peft's norm is computed in it, so
  that ``c`` is exactly 1 at the start as it is there.

Outside training (the run's evaluations) the same modules run the evaluation forward of
:mod:`~tunesmith.methods.dora_norm`, which reads the same norms. A branch with dropout keeps
peft's forward: its base term reads the masked input, a second frozen product. Values equal
peft's within bf16 rounding (``tests/train/fastpath/test_dora.py``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from tunesmith.methods.dora_norm import ATTR, eval_class, weight_norm
from tunesmith.train.fastpath import native
from tunesmith.train.fastpath.lora import (
    swap_lora_linears,
    takes_fused_path,
    why_not_one_frozen_linear,
)
from tunesmith.train.fastpath.lora_linear import LoraLinears
from tunesmith.train.fastpath.patch import Patch, class_swaps, fast_subclass, skipped


class DoraScale(torch.autograd.Function):
    """``y -> y * (m / n) + bias`` by columns; ``n`` carries no gradient (see the module doc).

    ``y`` is the LoRA node's ``x Wᵀ + s x Aᵀ Bᵀ``; the product by the fp32 scale is rounded
    once into ``y``'s dtype, as peft's fp32 sum is rounded once into its output (a bias, rare
    in the models tunesmith knows, is added after that rounding). Where
    tunesmith's CPU kernels take ``y`` (bf16, no bias) each direction is one pass
    (``native/kernels.cpp``: torch's bf16-by-fp32 product runs a per-element cast loop and a copy
    back, ~160 ms of a ~1.1 s demo step), the magnitude's sum over the rows in fp32.
    """

    @staticmethod
    def forward(ctx, y, magnitude, norm, bias):
        c = magnitude.float() / norm
        y2 = y.reshape(-1, y.shape[-1])
        kernels = native.kernels() if bias is None and native.runs_on(y2) else None
        if kernels is not None:
            out = kernels.dora_scale(y2, c).view(y.shape)
        else:
            out = torch.mul(y, c, out=torch.empty_like(y))
            if bias is not None:
                out.add_(bias)
        ctx.save_for_backward(y, c, norm)
        ctx.m_dtype, ctx.kernels = magnitude.dtype, kernels is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        y, c, norm = ctx.saved_tensors
        want_dy, want_dm = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g2, y2 = grad.reshape(-1, grad.shape[-1]), y.reshape(-1, y.shape[-1])
        dy = dm = db = None
        kernels = native.kernels() if ctx.kernels and g2.is_contiguous() else None
        if kernels is not None and (want_dy or want_dm):
            dy2, sums = kernels.dora_scale_backward(g2, y2, c, want_dy)
            dy = dy2.view(grad.shape) if want_dy else None
            dm = (sums / norm).to(ctx.m_dtype) if want_dm else None
        else:
            if want_dy:
                dy = torch.mul(grad, c, out=torch.empty_like(grad))
            if want_dm:
                dm = ((g2 * y2).sum(0, dtype=torch.float32) / norm).to(ctx.m_dtype)
        if ctx.needs_input_grad[3]:
            db = g2.sum(0)
        return dy, dm, None, db


def why_not_fast(module: nn.Module) -> str | None:
    """Why ``module`` (a peft LoRA ``Linear`` with DoRA) keeps peft's forward, or None."""
    return why_not_one_frozen_linear(module, _why_branch_not_dora)


def _why_branch_not_dora(module: nn.Module, name: str) -> str | None:
    if not module.use_dora.get(name, False):
        return "not DoRA"
    if not isinstance(module.lora_dropout[name], nn.Identity):
        return "DoRA with dropout reads the masked input in its base term (a second product)"
    if module.lora_B[name].bias is not None:
        return "it has a LoRA bias"
    return None


def _fast_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or not takes_fused_path(self, x, _why_branch_not_dora):
        return super(type(self), self).forward(x, *args, **kwargs)
    name = self.active_adapters[0]
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    scale = float(self.scaling[name])
    weight, bias = self.base_layer.weight, self.base_layer.bias
    y = LoraLinears.apply(x, weight, None, (scale,), None, a, b)
    norm = weight_norm(self, name, x.dtype)
    return DoraScale.apply(y, self.lora_magnitude_vector[name].weight, norm, bias)


@functools.cache
def _fast_class(cls: type) -> type:
    """Its calls outside training go to the evaluation forward of ``methods/dora_norm.py``."""
    return fast_subclass(eval_class(cls), _fast_forward, globals())


def install(model: nn.Module) -> Patch:
    """Give every DoRA ``Linear`` without dropout (one adapter, frozen ``nn.Linear`` base) the
    forward above, those given the evaluation forward at load included
    (:func:`~tunesmith.methods.dora_norm.install`). ``undo`` gives each its class back and drops
    the norms it kept."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return skipped("peft's LoRA layers are not importable")
    classes = (LoraLinear, eval_class(LoraLinear))
    wanted = lambda m: any(m.use_dora.values())  # noqa: E731
    changed, reasons = swap_lora_linears(model, why_not_fast, _fast_class, wanted, classes)
    if not changed and not reasons:
        return Patch()  # no DoRA layer: nothing to say in a LoRA (or any other) run's log
    added = [m for m, _ in changed if ATTR not in m.__dict__]
    for module in added:
        module.__dict__[ATTR] = {}
    patch = class_swaps(changed, [], none="; ".join(sorted(reasons)))
    swaps = patch.undo

    def undo() -> None:
        for module in added:
            module.__dict__.pop(ATTR, None)
        swaps()

    patch.undo = undo
    return patch
