"""A LoRA branch without dropout as one autograd function: ``result + x Aᵀ (s B)ᵀ`` in one ``addmm``.

peft adds a LoRA update to its frozen projection as ``result + lora_B(lora_A(x)) * scaling``:
forward a matmul into a new ``(tokens, d_out)`` tensor, a multiply by the scale into another and
an add into a third; backward the scale's multiply again over ``(tokens, d_out)``. On CPU each of
those is a pass over the projection's whole output, per adapted projection (the default recipe
adapts seven per block, up to ``d_out`` = 1536 on the demo model). Here the scale goes into the
rank-r side (``s B`` is ``d_out x r``, tiny), and ``torch.addmm`` adds ``h (s B)ᵀ`` to
``result`` in the same pass that computes it; the backward hands the output's gradient to
``result`` as it is and computes the four rank-r products. Values equal peft's within bf16
rounding (the scale is applied before rounding instead of after;
``tests/train/fastpath/test_lora.py`` pins the tolerance). Measured on the demo (2-core AMX
CPU, benchmarks/RESULTS.md "The default LoRA recipe"): 6% less peak memory; a step 5-6% faster
on a loaded machine, the same on a quiet one.

Only the plain branch qualifies, checked per module at install time and per call: one active
adapter, no dropout (with dropout the masked input is a new tensor anyway, and
:mod:`~tunesmith.train.fastpath.dropout` is the cheaper part to fix there), no DoRA or other
variant, no LoRA bias, an ``nn.Linear`` base (not 4-bit), training with gradients on. Anything
else runs peft's own forward, which is also the reference path. Weight dtypes follow the compute
context: under autocast (tunesmith's bf16 training of fp32 adapter weights) the product runs in
the autocast dtype, as peft's would; without it, only when input and weights share a dtype.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from tunesmith.train.fastpath.patch import Patch, class_swaps, skipped


class _LoraAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, result, x, a_weight, b_weight, scale: float):
        dtype = result.dtype
        a = a_weight.to(dtype)
        b = (b_weight * scale).to(dtype)  # scaled before rounding: one rounding, in B's dtype
        x2 = x.reshape(-1, x.shape[-1])
        h = x2 @ a.t()
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h, b.t())
        ctx.save_for_backward(x2, h, a, b)
        ctx.scale, ctx.x_shape = scale, x.shape
        ctx.weight_dtypes = (a_weight.dtype, b_weight.dtype)
        return out.view(result.shape)

    @staticmethod
    def backward(ctx, grad):
        x2, h, a, b = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        dh = g2 @ b
        a_dtype, b_dtype = ctx.weight_dtypes
        d_a = (dh.t() @ x2).to(a_dtype)
        d_b = (g2.t() @ h).to(b_dtype).mul_(ctx.scale)
        dx = (dh @ a).view(ctx.x_shape) if ctx.needs_input_grad[1] else None
        return grad, dx, d_a, d_b, None


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype peft's branch would compute in here, or None where this path does not apply."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return dtype if x.dtype == dtype else None
    return x.dtype if x.dtype == weight.dtype else None


def _fast_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = self.active_adapters
    if (
        args or kwargs or not self.training or not torch.is_grad_enabled()
        or self.disable_adapters or self.merged or len(active) != 1
        or active[0] not in self.lora_A or active[0] in self.lora_variant
    ):  # fmt: skip
        return super(type(self), self).forward(x, *args, **kwargs)
    name = active[0]
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    dtype = _compute_dtype(x, a)
    if dtype is None:
        return super(type(self), self).forward(x)
    result = self.base_layer(x)
    if result.dtype != dtype:  # a base computing in another dtype: peft's casts decide
        return super(type(self), self).forward(x)
    return _LoraAdd.apply(result, x, a, b, float(self.scaling[name]))


def why_not_plain(module: nn.Module) -> str | None:
    """Why ``module`` (a peft LoRA ``Linear``) keeps peft's forward, or None if it qualifies."""
    names = list(module.lora_A.keys())
    if len(names) != 1:
        return f"{len(names)} adapters"
    name = names[0]
    if not isinstance(module.base_layer, nn.Linear):
        return f"its base layer is a {type(module.base_layer).__name__}"
    if name in module.lora_variant or module.use_dora.get(name, False):
        return "a LoRA variant (DoRA) computes its own branch"
    if not isinstance(module.lora_dropout[name], nn.Identity):
        return "it has dropout"
    if module.lora_B[name].bias is not None:
        return "it has a LoRA bias"
    if getattr(module, "fan_in_fan_out", False):
        return "its weights are stored transposed (fan_in_fan_out)"
    return None


@functools.cache
def _fast_class(cls: type) -> type:
    """A subclass of ``cls`` with the fused forward: ``isinstance`` checks keep working."""
    fast = type(f"Fast{cls.__name__}", (cls,), {"forward": _fast_forward, "__module__": __name__})
    globals()[fast.__name__] = fast  # findable by name, so a module pickled here loads again
    return fast


def install(model: nn.Module) -> Patch:
    """Give every plain LoRA ``Linear`` branch (no dropout, no variant) the fused forward.

    ``undo`` gives every changed module its class back; weights and state dicts are untouched.
    """
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return skipped("peft's LoRA layers are not importable")
    changed: list[tuple[nn.Module, type]] = []
    reasons: set[str] = set()
    for module in model.modules():
        if type(module) is not LoraLinear:
            continue
        why = why_not_plain(module)
        if why is not None:
            reasons.add(why)
            continue
        module.__class__ = _fast_class(LoraLinear)
        changed.append((module, LoraLinear))
    # A branch left to peft is a choice by design (dropout, DoRA), never an unknown model.
    none = "; ".join(sorted(reasons)) if reasons else "the model has no LoRA Linear layer"
    return class_swaps(changed, [], none=none)
