"""A gated MLP's three projections and its product as one autograd node.

transformers' Llama-family MLP is ``down(silu(gate(x)) * up(x))``: with the other fast paths
that is four autograd nodes and three module calls (each LoRA projection its peft layer, the
fast path's per-call checks and a :class:`~tunesmith.train.fastpath.lora_linear.LoraLinears`
node; the product a :mod:`~tunesmith.train.fastpath.swiglu` node), and autograd adds the gate's
and the up projection's input gradients as a fifth step. On CPU each costs Python, dispatch and
autograd bookkeeping between the kernels. Here one node runs the same kernels in the same order:
each projection frozen (``row_split``'s products) or a plain LoRA projection
(:func:`~tunesmith.train.fastpath.lora_linear.fused_forward` and ``fused_backward``, the
LoRA node's own code), the product in the SwiGLU kernels, and the two input gradients added as
autograd adds them, so outputs and every gradient equal the module calls' bit for bit
(``tests/train/fastpath/test_gated_mlp.py``); where gate and up are both frozen, the input
gradient is one sum (``d_gate W_gate`` with ``d_up W_up`` accumulated into it in place), as the
frozen pair's node computed it. The tensors kept for the backward are those the separate nodes
kept. Measured (benchmarks/RESULTS.md, "The gated MLP as one node; ..."): ~15 ms of per-call
work off a 30-layer step, a step 0.89-0.94x where that work dominates (a model of the demo's
depth and narrow widths), 0.90-0.97x on the seed recipe's frozen MLPs, within the noise on the
demo's recipe on the AMD EPYC, whose products take 70% of its step.

Per call (:func:`plan`), only where every projection takes its fast path now: frozen linears of
:mod:`~tunesmith.train.fastpath.frozen_linear` without a bias, or LoRA projections of
:mod:`~tunesmith.train.fastpath.lora` with one plain adapter, no dropout, no bias, not stacked
with siblings; none hooked; bf16 activations on CPU with gradients wanted. Anything else (a
LoRA dropout mask, DoRA, a hook, evaluation) keeps the module calls, which are also the
reference path.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.train.fastpath import frozen_linear, lora, native
from tunesmith.train.fastpath.lora_linear import fused_backward, fused_forward
from tunesmith.train.fastpath.row_split import splits

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _lora_side(module: nn.Module, x: torch.Tensor):
    """``(weight, (scale,), A, B)`` where ``module`` is a LoRA projection of the lora fast path
    taking it for ``x`` now (:func:`~tunesmith.train.fastpath.lora.takes`) without dropout or a
    base bias; else None."""
    if not lora.takes(module, x):
        return None
    name = module.active_adapters[0]
    base = module.base_layer
    if not isinstance(module.lora_dropout[name], nn.Identity) or base.bias is not None:
        return None
    scale = (float(module.scaling[name]),)
    return base.weight, scale, module.lora_A[name].weight, module.lora_B[name].weight


def plan(mlp: nn.Module, x: torch.Tensor):
    """``(weights, scales, ab)`` for :class:`GatedMlp` where ``mlp``'s three projections all
    take a fast path for ``x`` now and a gradient is wanted; None to run the module calls.

    ``weights``: the three frozen weights; ``scales``: per projection its LoRA scale as a
    1-tuple, or None where it is frozen; ``ab``: each LoRA projection's A and B, in order.
    """
    if not (torch.is_grad_enabled() and x.dim() >= 2 and native.runs_on(x)):
        return None
    weights, scales, ab = [], [], []
    for name in PROJECTIONS:
        module = getattr(mlp, name)
        if frozen_linear.takes(module, x):
            weights.append(module.weight)
            scales.append(None)
        elif (side := _lora_side(module, x)) is not None:
            weights.append(side[0])
            scales.append(side[1])
            ab += side[2:]
        else:
            return None
    if not ab and not x.requires_grad:
        return None  # nothing to differentiate
    gate, up, down = weights
    if gate.shape != up.shape or down.shape[1] != gate.shape[0]:
        return None
    return tuple(weights), tuple(scales), tuple(ab)


def _project(x2, weight, scale, ab):
    """One projection forward: ``(out, h)``, ``h`` the LoRA branch's rank-r input or None."""
    if scale is None:
        return splits().mm(x2, weight.t()), None
    out, _, h, _ = fused_forward(x2, weight, None, scale, None, ab)
    return out, h


def _project_back(g2, x2, h, weight, scale, ab, want_dx: bool):
    """One projection backward: ``(dx2 or None, [dA, dB] or [])``."""
    if scale is None:
        return (splits().mm(g2, weight) if want_dx else None), []
    return fused_backward(g2, x2, h, weight, ab, scale, None, want_dx)


def frozen_pair_dx(d_gate, d_up, w_gate, w_up) -> torch.Tensor:
    """The input gradient of two frozen projections of one input: ``d_gate W_gate`` with ``d_up
    W_up`` accumulated into it in place (one sum, rounded once)."""
    rows = splits()
    return rows.addmm_(rows.mm(d_gate, w_gate), d_up, w_up)


def _sides(scales, ab) -> list[tuple]:
    """Each projection's ``(A, B)`` from ``ab``; ``()`` where it is frozen."""
    sides, i = [], 0
    for scale in scales:
        n = 0 if scale is None else 2
        sides.append(tuple(ab[i : i + n]))
        i += n
    return sides


class GatedMlp(torch.autograd.Function):
    """``x -> down(silu(gate(x)) * up(x))``; see the module doc.

    ``apply(x, weights, scales, *ab)`` with :func:`plan`'s ``weights``, ``scales`` and ``ab``.
    """

    @staticmethod
    def forward(ctx, x, weights, scales, *ab):
        x2 = x.reshape(-1, x.shape[-1])
        sides = _sides(scales, ab)
        kernels = native.kernels()
        gate, h_gate = _project(x2, weights[0], scales[0], sides[0])
        up, h_up = _project(x2, weights[1], scales[1], sides[1])
        gate, up = gate.contiguous(), up.contiguous()  # no-ops: the products write in order
        product = kernels.swiglu_forward(gate, up)
        out, h_down = _project(product, weights[2], scales[2], sides[2])
        lora_gate_up = scales[0] is not None or scales[1] is not None
        ctx.save_for_backward(
            x2 if lora_gate_up else None, gate, up,
            product if scales[2] is not None else None,  # down's LoRA branch reads it
            h_gate, h_up, h_down, *weights, *ab,
        )  # fmt: skip
        ctx.scales, ctx.x_shape = scales, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, gate, up, product, h_gate, h_up, h_down, *rest = ctx.saved_tensors
        weights, ab = rest[:3], rest[3:]
        scales = ctx.scales
        sides = _sides(scales, ab)
        g2 = grad.reshape(-1, grad.shape[-1])
        kernels = native.kernels()
        want_dx = ctx.needs_input_grad[0]
        frozen_pair = scales[0] is None and scales[1] is None
        d_product, grads_down = _project_back(
            g2, product, h_down, weights[2], scales[2], sides[2], want_dx or not frozen_pair
        )
        grads_gate = grads_up = []
        dx = None
        if frozen_pair:
            if want_dx:
                d_gate, d_up = kernels.swiglu_backward(d_product, gate, up)
                dx = frozen_pair_dx(d_gate, d_up, weights[0], weights[1])
        else:
            d_gate, d_up = kernels.swiglu_backward(d_product, gate, up)
            dx, grads_gate = _project_back(
                d_gate, x2, h_gate, weights[0], scales[0], sides[0], want_dx
            )
            dx_up, grads_up = _project_back(
                d_up, x2, h_up, weights[1], scales[1], sides[1], want_dx
            )
            if want_dx:
                dx.add_(dx_up)  # as autograd adds the two projections' input gradients
        dx = None if dx is None else dx.view(ctx.x_shape)
        grads = [*grads_gate, *grads_up, *grads_down]
        return dx, None, None, *grads
