"""Rotary position embedding (RoPE) for CPU training in four ops per direction instead of ~nine.

transformers applies RoPE as ``q * cos + rotate_half(q) * sin`` with ``rotate_half(x) =
cat(-x2, x1)`` (``x1``, ``x2`` the two halves of the head dimension): forward a ``neg``, a
``cat`` into a new tensor, two ``mul`` and an ``add``; backward two ``mul``, a ``neg``, and for
each half of the ``cat`` a zero-filled full-size tensor with the half copied in (``slice``
backward), summed into the input's gradient. Written out per half (``c``, ``s`` likewise):

    y1 = x1 c1 - x2 s1            dx1 = g1 c1 + g2 s2
    y2 = x2 c2 + x1 s2            dx2 = g2 c2 - g1 s1

so here the forward is ``y = x * c``, ``u = x * [s2, s1]``, ``y1 -= u2``, ``y2 += u1`` and the
backward ``dx = g * c``, ``w = g * s``, ``dx1 += w2``, ``dx2 -= w1``: four ops each way, nothing
zero-filled, no ``cat`` of the input. Every product is rounded to the input's dtype where
transformers rounds it, and every sum adds the same two rounded values (the zero-filled halves
add exact zeros), so outputs and gradients equal transformers' bit for bit.

transformers' attention layers call RoPE as the module-level function ``apply_rotary_pos_emb``
of their modeling module (``modeling_llama.apply_rotary_pos_emb``), so :func:`install` gives
each attention layer a subclass whose forward puts the fused function there for the duration
of its own call and the original back after it: other models in the process keep
transformers' code, and ``undo`` gives each layer its class back. A layer is changed only
after a probe shows its modeling module's function computes this formula
(:func:`why_not_standard_rope`); the fused function falls back to the original for anything it
is not built for (no gradient wanted, mixed dtypes, a rotary width other than the head's).

Where tunesmith's CPU kernels are built (:mod:`~tunesmith.train.fastpath.native`), bf16 RoPE
runs the same formulas, with the same roundings, in one pass each way (still bit for bit).
The swapped class's forward first offers the call to
:mod:`~tunesmith.train.fastpath.attention_block`, which runs a Llama attention block's whole
forward, this kernel included, as one autograd node where it applies.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from torch import nn

from tunesmith.train.fastpath import native
from tunesmith.train.fastpath.patch import Patch, class_swaps

FUNCTION = "apply_rotary_pos_emb"


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, sin_swapped):
        h = x.shape[-1] // 2
        y = torch.mul(x, cos, out=torch.empty_like(x))  # keeps x's (transposed) layout
        u = x * sin_swapped  # [x1 s2, x2 s1]
        y[..., :h].sub_(u[..., h:])
        y[..., h:].add_(u[..., :h])
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        h = grad.shape[-1] // 2
        dx = grad * cos
        w = grad * sin
        dx[..., :h].add_(w[..., h:])
        dx[..., h:].sub_(w[..., :h])
        return dx, None, None, None


class _NativeRope(torch.autograd.Function):
    """:class:`_Rope` in one pass each way of tunesmith's CPU kernels (bf16), bit for bit."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return native_rope(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        return native_rope(grad, *ctx.saved_tensors, backward=True), None, None


def native_rope(x: torch.Tensor, cos, sin, backward: bool = False) -> torch.Tensor:
    """The kernel's RoPE of ``x`` (b, heads, t, d), or its backward (``x`` the gradient);
    the result keeps ``x``'s layout where it is dense."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return native.kernels().rope(x, cos, sin, backward)


def _native(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` (b, heads, t, d) with ``cos``, ``sin`` (b or 1, 1, t, d)."""
    return (
        x.dim() == 4 == cos.dim() and x.stride(-1) == 1 and cos.stride(-1) == 1
        and cos.shape == sin.shape and cos.stride() == sin.stride()
        and cos.shape[0] in (1, x.shape[0]) and cos.shape[1] == 1 and cos.shape[2:] == x.shape[2:]
        and native.runs_on(x, cos, sin)
    )  # fmt: skip


def rope(q, k, cos, sin, unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` with the fused autograd function.

    Args:
        q: Queries ``(b, heads, t, d)`` (any strides).
        k: Keys ``(b, kv_heads, t, d)``.
        cos: ``(b, t, d)``, unsqueezed at ``unsqueeze_dim`` to broadcast over heads.
        sin: Like ``cos``.
        unsqueeze_dim: Where the heads dimension is in ``q`` and ``k``.

    Returns:
        The rotated ``(q, k)``, same shapes, dtypes and layouts.
    """
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if unsqueeze_dim == 1 and _native(q, cos, sin) and _native(k, cos, sin):
        return _NativeRope.apply(q, cos, sin), _NativeRope.apply(k, cos, sin)
    h = sin.shape[-1] // 2
    sin_swapped = torch.cat((sin[..., h:], sin[..., :h]), dim=-1)  # shared by q and k
    return _Rope.apply(q, cos, sin, sin_swapped), _Rope.apply(k, cos, sin, sin_swapped)


def _fits(q, k, cos, sin) -> bool:
    """Whether :func:`rope` is built for these inputs (else the original runs)."""
    if not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad):
        return False  # inference keeps transformers' code
    d = q.shape[-1]
    if d % 2 or k.shape[-1] != d or cos.shape[-1] != d or sin.shape[-1] != d:
        return False
    return q.dtype == k.dtype == cos.dtype == sin.dtype  # as transformers' ops, no promotion


def _fused(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        # Only the call transformers makes today; other arguments (an older signature's
        # position_ids) go to the original untouched.
        if not args and set(kwargs) <= {"unsqueeze_dim"} and _fits(q, k, cos, sin):
            return rope(q, k, cos, sin, kwargs.get("unsqueeze_dim", 1))
        return original(q, k, cos, sin, *args, **kwargs)

    return apply_rotary_pos_emb


def why_not_standard_rope(function: Callable) -> str | None:
    """Why ``function`` is not transformers' standard RoPE; None when it is.

    Calls it as transformers does, ``function(q, k, cos, sin)``, and compares it with
    :func:`rope` on a small random bf16 input, forward and input gradients, bit for bit, with
    ``cos`` and ``sin`` halves that differ (so an interleaved or partial variant cannot pass by
    symmetry). ``function`` may be a plain function or a callable module (the ``kernels``
    package wraps it in one).
    """
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, grad=False):
        x = torch.randn(shape, generator=gen).to(torch.bfloat16)
        return x.requires_grad_(grad)

    q, k, cos, sin = (
        randn(2, 4, 5, 8, grad=True),
        randn(2, 2, 5, 8, grad=True),
        randn(2, 5, 8),
        randn(2, 5, 8),
    )
    gq, gk = randn(2, 4, 5, 8), randn(2, 2, 5, 8)
    try:
        want = function(q, k, cos, sin)
        want_grads = torch.autograd.grad(want, (q, k), (gq, gk))
    except Exception as exc:  # noqa: BLE001 - any failure means: leave this function alone
        return f"it failed on a probe input ({type(exc).__name__})"
    got = rope(q, k, cos, sin)
    got_grads = torch.autograd.grad(got, (q, k), (gq, gk))
    same = all(
        isinstance(w, torch.Tensor) and w.shape == g.shape and torch.equal(w, g)
        for w, g in zip((*want, *want_grads), (*got, *got_grads), strict=True)
    )
    return None if same else "it does not compute q * cos + rotate_half(q) * sin"


@functools.cache
def _fast_class(cls: type, original: Callable) -> type:
    """A subclass of attention class ``cls`` whose forward runs with the fused RoPE in place of
    ``original``: ``isinstance`` checks keep working, and only this model's layers see it."""
    from tunesmith.train.fastpath import attention_block  # it calls this module's kernel

    owner = sys.modules[cls.__module__]
    fused = _fused(original)

    def forward(self, *args, **kwargs):
        if owner.__dict__.get(FUNCTION) is not original:  # replaced since: leave it be
            return cls.forward(self, *args, **kwargs)
        if (whole := attention_block.run(self, cls, args, kwargs)) is not None:
            return whole  # the whole block as one node (the same kernels, bit for bit)
        setattr(owner, FUNCTION, fused)  # cls.forward looks the function up in owner
        try:
            return cls.forward(self, *args, **kwargs)
        finally:
            setattr(owner, FUNCTION, original)

    fast = type(f"Rope{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    # Findable by name, so a model pickled in this process loads again here (as rmsnorm.py).
    globals()[fast.__name__] = fast
    return fast


def _candidates(model: nn.Module) -> dict[type, list[nn.Module]]:
    """Attention modules by class whose modeling module has ``apply_rotary_pos_emb``,
    excluding those already changed."""
    found: dict[type, list[nn.Module]] = {}
    for module in model.modules():
        cls = type(module)
        owner = sys.modules.get(cls.__module__)
        if cls.__name__.endswith("Attention") and callable(getattr(owner, FUNCTION, None)):
            found.setdefault(cls, []).append(module)
    return found


def install(model: nn.Module) -> Patch:
    """Give every attention layer of ``model`` whose modeling module's ``apply_rotary_pos_emb``
    is the standard formula the fused RoPE; ``undo`` gives each its original class back."""
    changed: list[tuple[nn.Module, type]] = []
    refused: list[str] = []
    for cls, modules in _candidates(model).items():
        original = getattr(sys.modules[cls.__module__], FUNCTION)
        why = why_not_standard_rope(original)
        if why is not None:
            refused.append(f"{cls.__module__}.{FUNCTION}: {why}")
            continue
        for module in modules:
            module.__class__ = _fast_class(cls, original)
            changed.append((module, cls))
    return class_swaps(changed, refused, none="no attention layer calls apply_rotary_pos_emb")
