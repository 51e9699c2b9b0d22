"""A gated MLP's three projections and its product as one autograd node.

transformers' Llama-family MLP is ``down(silu(gate(x)) * up(x))``: with the other fast paths
that is four autograd nodes and three module calls (each LoRA projection its peft layer, the
fast path's per-call checks and a :class:`~tunesmith.train.fastpath.lora_linear.LoraLinears`
node; the product a :mod:`~tunesmith.train.fastpath.swiglu` node), and autograd adds the gate's
and the up projection's input gradients as a fifth step. On CPU each costs Python, dispatch and
autograd bookkeeping between the kernels. Here one node runs the same kernels in the same order:
each projection frozen (``row_split``'s products) or a plain LoRA projection
(:func:`~tunesmith.train.fastpath.lora_linear.project` and ``project_back``, the LoRA node's
own code), the product in the SwiGLU kernels, and the two input gradients added as autograd
adds them; a branch's dropout mask is drawn by its own module, in the module calls' order
(gate, up, down), before the node runs. So outputs and every gradient equal the module calls'
bit for bit (``tests/train/fastpath/test_gated_mlp.py``); where gate and up are both frozen,
the input gradient is one sum (``d_gate W_gate`` with ``d_up W_up`` accumulated into it in
place), as the frozen pair's node computed it. The tensors kept for the backward are those the separate nodes
kept. Measured (benchmarks/RESULTS.md, "The gated MLP as one node; ..."): ~15 ms of per-call
work off a 30-layer step, a step 0.89-0.94x where that work dominates (a model of the demo's
depth and narrow widths), 0.90-0.97x on the seed recipe's frozen MLPs, within the noise on the
demo's recipe on the AMD EPYC, whose products take 70% of its step.

Per call (:func:`plan`), only where every projection takes its fast path now: frozen linears of
:mod:`~tunesmith.train.fastpath.frozen_linear` without a bias, or LoRA projections of
:mod:`~tunesmith.train.fastpath.lora` with one plain adapter (no dropout, or tunesmith's), no
bias, not stacked with siblings; none hooked; bf16 activations on CPU with gradients wanted.
Anything else (DoRA, a hook, evaluation) keeps the module calls, which are also the reference
path.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.train.fastpath import frozen_linear, lora, native
from tunesmith.train.fastpath.lora_linear import project, project_back
from tunesmith.train.fastpath.lora_linear import sides as lora_sides
from tunesmith.train.fastpath.row_split import splits

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def plan(mlp: nn.Module, x: torch.Tensor):
    """``(weights, scales, dropouts, ab)`` for :class:`GatedMlp` where ``mlp``'s three
    projections all take a fast path for ``x`` now and a gradient is wanted, every dropout mask
    drawn (in the module calls' order: gate, up, down); None to run the module calls (nothing
    drawn).

    ``weights``: the three frozen weights; ``scales``: per projection its LoRA scale as a
    1-tuple, or None where it is frozen; ``dropouts``: per projection its drawn ``(mask,
    scale)`` or None; ``ab``: each LoRA projection's A and B, in order.
    """
    if not (torch.is_grad_enabled() and x.dim() >= 2 and native.runs_on(x)):
        return None
    weights, scales, drops, ab = [], [], [], []
    for name in PROJECTIONS:
        module = getattr(mlp, name)
        if frozen_linear.takes(module, x):
            weights.append(module.weight)
            scales.append(None)
            drops.append(None)
        elif (side := lora.branch(module, x)) is not None and side[1] is None:  # no bias
            weights.append(side[0])
            scales.append(side[2])
            ab += side[3]
            drops.append(side[4])
        else:
            return None
    if not ab and not x.requires_grad:
        return None  # nothing to differentiate
    gate, up, down = weights
    if gate.shape != up.shape or down.shape[1] != gate.shape[0]:
        return None
    product = x.new_empty(()).expand(*x.shape[:-1], gate.shape[0])  # down's input, as a shape
    drawn = tuple(
        None if d is None else d.draw(x if i < 2 else product) for i, d in enumerate(drops)
    )
    return tuple(weights), tuple(scales), drawn, tuple(ab)


def frozen_pair_dx(d_gate, d_up, w_gate, w_up) -> torch.Tensor:
    """The input gradient of two frozen projections of one input: ``d_gate W_gate`` with ``d_up
    W_up`` accumulated into it in place (one sum, rounded once)."""
    rows = splits()
    return rows.addmm_(rows.mm(d_gate, w_gate), d_up, w_up)


class GatedMlp(torch.autograd.Function):
    """``x -> down(silu(gate(x)) * up(x))``; see the module doc.

    ``apply(x, weights, scales, dropouts, *ab)`` with :func:`plan`'s values.
    """

    @staticmethod
    def forward(ctx, x, weights, scales, dropouts, *ab):
        x2 = x.reshape(-1, x.shape[-1])
        sides = lora_sides([0 if s is None else 2 for s in scales], ab)
        gate, x_gate, h_gate, d_gate = project(
            x2, weights[0], None, scales[0], dropouts[0], sides[0]
        )
        up, x_up, h_up, d_up = project(x2, weights[1], None, scales[1], dropouts[1], sides[1])
        gate, up = gate.contiguous(), up.contiguous()  # no-ops: the products write in order
        product = native.kernels().swiglu_forward(gate, up)
        out, x_down, h_down, d_down = project(
            product, weights[2], None, scales[2], dropouts[2], sides[2]
        )
        # Each LoRA branch's input (x, the product, or their masked copies); None where frozen.
        ctx.save_for_backward(x_gate, x_up, gate, up, x_down, h_gate, h_up, h_down, *weights, *ab)
        ctx.scales, ctx.dropouts, ctx.x_shape = scales, (d_gate, d_up, d_down), x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x_gate, x_up, gate, up, x_down, h_gate, h_up, h_down, *rest = ctx.saved_tensors
        weights, ab = rest[:3], rest[3:]
        scales, drops = ctx.scales, ctx.dropouts
        sides = lora_sides([0 if s is None else 2 for s in scales], ab)
        g2 = grad.reshape(-1, grad.shape[-1])
        kernels = native.kernels()
        want_dx = ctx.needs_input_grad[0]
        frozen_pair = scales[0] is None and scales[1] is None
        d_product, grads_down = project_back(
            g2, x_down, h_down, weights[2], scales[2], drops[2], sides[2],
            want_dx or not frozen_pair,
        )  # fmt: skip
        grads_gate = grads_up = []
        dx = None
        if frozen_pair:
            if want_dx:
                d_gate, d_up = kernels.swiglu_backward(d_product, gate, up)
                dx = frozen_pair_dx(d_gate, d_up, weights[0], weights[1])
        else:
            d_gate, d_up = kernels.swiglu_backward(d_product, gate, up)
            dx, grads_gate = project_back(
                d_gate, x_gate, h_gate, weights[0], scales[0], drops[0], sides[0], want_dx
            )
            dx_up, grads_up = project_back(
                d_up, x_up, h_up, weights[1], scales[1], drops[1], sides[1], want_dx
            )
            if want_dx:
                dx.add_(dx_up)  # as autograd adds the two projections' input gradients
        dx = None if dx is None else dx.view(ctx.x_shape)
        grads = [*grads_gate, *grads_up, *grads_down]
        return dx, None, None, None, *grads
