"""A LoRA projection as one autograd node: frozen base and branch together.

peft adds a LoRA update to its frozen projection as ``result + lora_B(lora_A(dropout(x))) *
scaling``: forward a matmul into a new ``(tokens, d_out)`` tensor, a multiply by the scale into
another and an add into a third; backward the scale's multiply again over ``(tokens, d_out)``,
and the base layer's input gradient and the branch's added in one more pass over ``(tokens,
d_in)``. On CPU each of those is a pass over a whole activation, per adapted projection (the
default recipe adapts seven per block). Here
:class:`~tunesmith.train.fastpath.lora_linear.LoraLinears` computes base and branch in one node
(the scale goes into the rank-r side, ``s B``, and the branch is added in place with one
``addmm_``; the input gradient is one more), and a block's q, k and v share one stacked weight
and one node (:mod:`~tunesmith.train.fastpath.lora_siblings`). Values equal peft's within bf16
rounding (``tests/train/fastpath/test_lora.py`` pins the tolerance). Measured on the demo (2-core
AMX CPU, benchmarks/RESULTS.md "The default LoRA recipe" and "One autograd node per LoRA
projection"): 6% less peak memory than peft's branch, and a step ~5% faster again with the
single node and the stacked q, k, v.

A branch with dropout is one node too, with the mask that its
:class:`~tunesmith.train.fastpath.dropout.FastDropout` draws (the same draw, from the same
generator, as peft's forward would make): the branch reads the masked input, the frozen base
the plain one. It is never stacked with its siblings (each masked branch reads its own copy of
the input). Measured on the bench's TRL-matched config (q, v with dropout 0.05): a step 1.5-2.5%
faster (benchmarks/RESULTS.md, "... LoRA dropout in the fused node").

Checked per module at install time and per call: one active adapter, no dropout or
tunesmith's (torch's own draws its mask inside its kernel), no DoRA or other variant, no LoRA
bias, a frozen ``nn.Linear`` base (not 4-bit), training with gradients on. Anything else runs
peft's own forward, which is also the reference path. Weight dtypes follow the compute context:
under autocast (tunesmith's bf16 training of fp32 adapter weights) the product runs in the
autocast dtype, as peft's would; without it, only when input and weights share a dtype.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from tunesmith.train.fastpath.call_context import compute_dtype, several_ranks
from tunesmith.train.fastpath.dropout import FastDropout
from tunesmith.train.fastpath.lora_linear import LoraLinears
from tunesmith.train.fastpath.lora_siblings import ATTR, group_siblings, ungroup
from tunesmith.train.fastpath.patch import Patch, class_swaps, fast_subclass, skipped


def takes_fused_path(self, x: torch.Tensor, branch_check) -> bool:
    """Per call (modes change, and an adapter added after install may have dropout or a bias):
    training with gradients, its one adapter on and passing ``branch_check(module, name)``
    (None, or why not), computing in its base weight's dtype (else peft's casts decide)."""
    active = self.active_adapters
    if not (
        self.training and torch.is_grad_enabled() and not self.disable_adapters
        and not self.merged and len(active) == 1 and active[0] in self.lora_A
    ):  # fmt: skip
        return False
    if branch_check(self, active[0]) is not None:
        return False
    a = self.lora_A[active[0]].weight
    return compute_dtype(x, a) == self.base_layer.weight.dtype


def _takes_fast_path(self, x: torch.Tensor) -> bool:
    return takes_fused_path(self, x, _why_branch_not_plain)


def takes(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` is a LoRA projection of this path that computes ``x`` through its
    fused node now, stacked with no siblings and with nothing hooked on its calls (so a caller
    may run its node's code itself, as :mod:`~tunesmith.train.fastpath.gated_mlp` does)."""
    return (
        type(module).forward is _fast_forward and module.__dict__.get(ATTR) is None
        and not module._forward_hooks and not module._forward_pre_hooks
        and _takes_fast_path(module, x)
    )  # fmt: skip


def branch(module: nn.Module, x: torch.Tensor) -> tuple | None:
    """``(base weight, base bias, (scale,), (A, B), dropout)`` where ``module`` :func:`takes`
    ``x`` now and a caller's node can draw its mask (``dropout`` its
    :class:`~tunesmith.train.fastpath.dropout.FastDropout`, or None without dropout); else None
    (a ``p`` of 1 runs peft's own forward)."""
    if not takes(module, x):
        return None
    name = module.active_adapters[0]
    drop = module.lora_dropout[name]
    if isinstance(drop, nn.Identity):
        drop = None
    elif not (isinstance(drop, FastDropout) and 0.0 < drop.p < 1.0):
        return None
    base = module.base_layer
    ab = (module.lora_A[name].weight, module.lora_B[name].weight)
    return base.weight, base.bias, (float(module.scaling[name]),), ab, drop


def _fast_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or not _takes_fast_path(self, x):
        return super(type(self), self).forward(x, *args, **kwargs)
    siblings = self.__dict__.get(ATTR)
    if siblings is not None and (out := siblings.take(self, x)) is not None:
        return out
    name = self.active_adapters[0]
    dropout = None
    if isinstance(drop := self.lora_dropout[name], FastDropout):
        dropout = drop.draw(x)
        if dropout is None:  # p of 1, or a dtype its masks do not cover: peft's own
            return super(type(self), self).forward(x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    scale = (float(self.scaling[name]),)
    weight, bias = self.base_layer.weight, self.base_layer.bias
    return LoraLinears.apply(x, weight, bias, scale, dropout, a, b)


def _why_branch_not_plain(module: nn.Module, name: str) -> str | None:
    """Why adapter ``name``'s branch is not the plain one this path computes, or None."""
    if name in module.lora_variant or module.use_dora.get(name, False):
        return "DoRA (the dora path's) or another LoRA variant computes its own branch"
    if module.lora_B[name].bias is not None:
        return "it has a LoRA bias"
    if not isinstance(module.lora_dropout[name], (nn.Identity, FastDropout)):
        return "its dropout is not tunesmith's (the dropout path installs it first)"
    return None


def why_not_plain(module: nn.Module) -> str | None:
    """Why ``module`` (a peft LoRA ``Linear``) keeps peft's forward, or None if it qualifies."""
    return why_not_one_frozen_linear(module, _why_branch_not_plain)


def why_not_one_frozen_linear(module: nn.Module, branch_check) -> str | None:
    """Why ``module`` is not one adapter on a frozen, untransposed ``nn.Linear`` whose branch
    passes ``branch_check(module, name)`` (None, or why not), or None where it is."""
    names = list(module.lora_A.keys())
    if len(names) != 1:
        return f"{len(names)} adapters"
    if not isinstance(module.base_layer, nn.Linear):
        return f"its base layer is a {type(module.base_layer).__name__}"
    if (why := branch_check(module, names[0])) is not None:
        return why
    if getattr(module, "fan_in_fan_out", False):
        return "its weights are stored transposed (fan_in_fan_out)"
    if any(p.requires_grad for p in module.base_layer.parameters()):
        return "its base layer trains"
    return None


def swap_lora_linears(model: nn.Module, why_not, fast_class, wanted, classes: tuple[type, ...]):
    """Give each module of ``model`` whose class is one of ``classes`` (peft's LoRA ``Linear``,
    or a subclass given at load), that is ``wanted`` and that ``why_not`` passes (returns None)
    the class ``fast_class(classes[0])``.

    Returns:
        ``(changed, reasons)``: ``(module, its class)`` per module changed, and why the others
        were not.
    """
    changed: list[tuple[nn.Module, type]] = []
    reasons: set[str] = set()
    for module in model.modules():
        cls = type(module)
        if cls not in classes or not wanted(module):
            continue
        why = why_not(module)
        if why is not None:
            reasons.add(why)
            continue
        module.__class__ = fast_class(classes[0])
        changed.append((module, cls))
    return changed, reasons


@functools.cache
def _fast_class(cls: type) -> type:
    """``cls`` with this path's forward (:func:`~tunesmith.train.fastpath.patch.fast_subclass`)."""
    return fast_subclass(cls, _fast_forward, globals())


def install(model: nn.Module) -> Patch:
    """Give every plain LoRA ``Linear`` branch (no variant, no dropout or tunesmith's, frozen
    base) the fused forward, and stack the frozen weights of each block's q, k and v without
    dropout (one process only).

    ``undo`` gives every changed module its class back and each stacked weight storage of its
    own; weight values and state dicts are untouched.
    """
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return skipped("peft's LoRA layers are not importable")
    every = lambda m: True  # noqa: E731
    changed, reasons = swap_lora_linears(model, why_not_plain, _fast_class, every, (LoraLinear,))
    # A branch left to peft is a choice by design (torch's dropout, DoRA), never an unknown model.
    none = "; ".join(sorted(reasons)) if reasons else "the model has no LoRA Linear layer"
    patch = class_swaps(changed, [], none=none)
    # Several ranks: FSDP re-homes each weight in its flat buffer, so none stays a view of a
    # stack of siblings (and DDP's buckets expect the weights it found).
    if not changed or several_ranks():
        return patch
    fast = {id(m) for m, _ in changed}
    groups = group_siblings(model, lambda m: id(m) in fast, _takes_fast_path)
    swaps = patch.undo

    def undo() -> None:
        ungroup(groups)
        swaps()

    patch.undo = undo
    return patch
