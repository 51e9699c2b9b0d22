"""DoRA's weight norm kept between calls, and the evaluation forward that reads it.

peft's DoRA (``DoraLinearLayer``) recomputes ``||W + s B A||`` for every row of the weight at
every call, training or not: it builds ``B A`` by running a ``(d_in, d_in)`` identity through
the branch and adds it to the whole ``(d_out, d_in)`` weight (peft's own cache,
``ENABLE_DORA_CACHING``, keeps that ``B A`` too: one more copy of every adapted weight). In
generation that is every projection at every new token: on the demo (SmolLM2-135M, every
projection adapted, 2-core AMD EPYC) the 120 held-out questions took ~2.5x LoRA's time.

:class:`WeightNorm` computes the same norms from ``||W_j||^2 + 2 s <B_j, (W Aᵀ)_j> + s^2 B_j
(A Aᵀ) B_jᵀ``: ``||W_j||`` once, then one ``(d_out, r)`` product whenever A or B changed (their
version counters say so: an optimizer step bumps them), and ``d_out`` floats kept. The training
fast path (``train/fastpath/dora.py``) and :func:`install`'s evaluation forward both read it.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

ATTR = "_tunesmith_dora_norms"  # adapter name -> WeightNorm, on each installed module


class WeightNorm:
    """``||W_j + s (B A)_j||`` for each output row j of one DoRA projection, kept until its
    weights change."""

    def __init__(self) -> None:
        self._w_key: tuple | None = None
        self._w_sq: torch.Tensor | None = None
        self._key: tuple | None = None
        self._norm: torch.Tensor | None = None

    def get(self, weight, a, b, scale: float, dtype: torch.dtype) -> torch.Tensor:
        """The fp32 norms (``(d_out,)``), rounded to ``dtype`` first as peft's are (it
        computes them in the input's dtype)."""
        w_key = (weight.data_ptr(), weight._version, weight.dtype)
        key = (w_key, a.data_ptr(), a._version, b.data_ptr(), b._version, scale, dtype)
        if key == self._key:
            return self._norm
        with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            if w_key != self._w_key:  # frozen: once
                # vector_norm in fp32 reduces as peft's norm of the same rows does, and
                # sqrt(fl(v * v)) == v: at B = 0 the norm below is peft's to the bit.
                w_norm = torch.linalg.vector_norm(weight, dim=1, dtype=torch.float32)
                self._w_sq, self._w_key = w_norm * w_norm, w_key
            a32, b32 = a.float(), b.float()
            # W Aᵀ in W's dtype: its rounding moves n by far less than n's own rounding below.
            wa = torch.mm(weight, a.to(weight.dtype).t()).float()
            cross = (b32 * wa).sum(1)
            quad = ((b32 @ (a32 @ a32.t())) * b32).sum(1)
            sq = self._w_sq + (2 * scale) * cross + (scale * scale) * quad
            self._norm = sq.clamp_min(0).sqrt().to(dtype).float()
        self._key = key
        return self._norm


def weight_norm(module: nn.Module, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Adapter ``name``'s norms on an installed ``module`` (a peft LoRA ``Linear``)."""
    norms = module.__dict__[ATTR].setdefault(name, WeightNorm())
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    return norms.get(module.base_layer.weight, a, b, float(module.scaling[name]), dtype)


def evaluates_here(module: nn.Module) -> bool:
    """Whether a call of ``module`` is one :func:`install`'s forward computes: evaluation mode,
    one active DoRA adapter on a plain, unmerged ``nn.Linear`` whose weight is in place (no
    accelerate hook moving it in for the call, as a ``device_map`` offload adds)."""
    active = module.active_adapters
    if module.training or module.disable_adapters or module.merged or len(active) != 1:
        return False
    name, base = active[0], module.base_layer
    return (
        name in module.lora_A and module.use_dora.get(name, False)
        and isinstance(base, nn.Linear) and module.lora_B[name].bias is None
        and not getattr(module, "fan_in_fan_out", False)
        and getattr(base, "_hf_hook", None) is None and base.weight.device.type != "meta"
    )  # fmt: skip


def _eval_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's evaluation formula, ``result + (c - 1) (result - bias) + c s B A x`` with ``c = m
    / n``, as ``c (x Wᵀ + s B A x) + bias`` (two passes over the output instead of five) with
    ``n`` from :func:`weight_norm`; dropout is off in evaluation."""
    if args or kwargs or not evaluates_here(self):  # peft's own (subclasses call this one)
        return self._peft_class.forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    weight, bias = self.base_layer.weight, self.base_layer.bias
    base = torch.nn.functional.linear(x, weight)
    xa = self._cast_input_dtype(x, self.lora_A[name].weight.dtype)  # as peft casts it
    y = self.lora_B[name](self.lora_A[name](xa)) * self.scaling[name]
    c = self.lora_magnitude_vector[name].weight / weight_norm(self, name, xa.dtype)
    if torch.is_grad_enabled():
        y = (y + base) * c
    else:  # y is this call's own: summed and scaled in place, in its (peft's) dtype
        y = y.add_(base).mul_(c)
    if bias is not None:
        y = y + bias
    return y.to(base.dtype)


@functools.cache
def eval_class(cls: type) -> type:
    """``cls`` (peft's LoRA ``Linear``) with the evaluation forward above."""
    name = f"DoraEval{cls.__name__}"
    attrs = {"forward": _eval_forward, "_peft_class": cls, "__module__": __name__}
    fast = type(name, (cls,), attrs)
    globals()[name] = fast  # a model pickled in this process loads again here
    return fast


def install(model: nn.Module) -> int:
    """Give every peft LoRA ``Linear`` of ``model`` that holds a DoRA adapter the evaluation
    forward (training calls and other adapters still run peft's). Idempotent; returns how many
    modules changed. State dicts, merging and saving are peft's own."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear and any(module.use_dora.values()):
            module.__class__ = eval_class(LoraLinear)
            module.__dict__.setdefault(ATTR, {})
            changed += 1
    return changed
