"""Frozen ``nn.Linear`` layers whose two GEMMs run the way this CPU runs them fastest.

A frozen projection (what the LoRA family, IA3, prefix and prompt tuning and the frozen blocks
of ``--method freeze`` leave alone) costs two GEMMs a step: ``x Wᵀ`` forward and the input
gradient ``g W`` backward, each one whole product under ``F.linear``. Here one autograd function
runs both through :mod:`~tunesmith.train.fastpath.row_split` (which cuts a product into row
blocks, or runs it in tunesmith's AMX kernel, only where that measured faster on this machine)
and, the weight being frozen, saves only the weight for the backward, as ``F.linear`` does.
Values equal ``F.linear``'s where no cut is taken and within bf16 rounding where one is
(``tests/train/fastpath/test_frozen_linear.py``).

Per call, only a product big enough to qualify takes it, in the weight's own dtype (under
autocast to another dtype, ``F.linear``'s casts decide), so generation (one row at a time) and
the tests' tiny models keep ``F.linear``. Not under several ranks: FSDP and DeepSpeed manage
where each weight lives between forward and backward, and ``F.linear`` is what they expect.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from tunesmith.train.fastpath import row_split
from tunesmith.train.fastpath.call_context import compute_dtype, several_ranks
from tunesmith.train.fastpath.patch import Patch, class_swaps, fast_subclass, skipped
from tunesmith.train.fastpath.row_split import splits


class FrozenLinearFn(torch.autograd.Function):
    """``x Wᵀ + bias`` with ``W`` and ``bias`` frozen; backward gives ``x`` its gradient only."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        out = _product(x, weight, bias)
        ctx.save_for_backward(weight)
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        dx = splits().mm(grad.reshape(-1, grad.shape[-1]), weight)
        return dx.view(ctx.x_shape), None, None


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    rows = splits()
    out = rows.mm(x2, weight.t()) if bias is None else rows.addmm(bias, x2, weight.t())
    return out.view(*x.shape[:-1], out.shape[-1])


def _takes_path(self: nn.Linear, x: torch.Tensor) -> bool:
    weight, bias = self.weight, self.bias
    if x.dim() < 2 or x.numel() < row_split.MIN_ROWS * x.shape[-1]:
        return False
    if bias is not None and bias.dtype != weight.dtype:
        return False
    return compute_dtype(x, weight) == weight.dtype  # else F.linear's casts decide


def takes(module: nn.Module, x: torch.Tensor, bias: bool = False) -> bool:
    """Whether ``module`` is a frozen linear of this path that computes ``x`` through it now,
    without a bias (unless ``bias``: the caller adds it as this path does) and with nothing
    hooked on its calls (so a caller that holds its weight may compute the product itself, as
    :mod:`~tunesmith.train.fastpath.swiglu` does)."""
    return (
        type(module).forward is _fast_forward and (bias or module.bias is None)
        and not module._forward_hooks and not module._forward_pre_hooks
        and _takes_path(module, x)
    )  # fmt: skip


def _fast_forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
    if not _takes_path(self, input):
        return super(type(self), self).forward(input)
    if torch.is_grad_enabled() and input.requires_grad:
        return FrozenLinearFn.apply(input, self.weight, self.bias)
    return _product(input, self.weight, self.bias)  # nothing to differentiate: no graph node


@functools.cache
def _fast_class(cls: type) -> type:
    """``cls`` with this path's forward (:func:`~tunesmith.train.fastpath.patch.fast_subclass`)."""
    return fast_subclass(cls, _fast_forward, globals())


def install(model: nn.Module) -> Patch:
    """Give every frozen ``nn.Linear`` (exactly that class, no parameter training) the
    row-split forward; ``undo`` gives each its class back."""
    if several_ranks():
        return skipped("several ranks: FSDP and DeepSpeed place the weights around F.linear")
    changed: list[tuple[nn.Module, type]] = []
    for module in model.modules():
        if type(module) is nn.Linear and not any(p.requires_grad for p in module.parameters()):
            module.__class__ = _fast_class(nn.Linear)
            changed.append((module, nn.Linear))
    return class_swaps(changed, [], none="no frozen nn.Linear layer")
