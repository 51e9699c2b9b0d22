"""An attention block's projections, RoPE and packed causal attention as one autograd node.

transformers' ``LlamaAttention.forward`` is ``o(attend(rope(q(x)), rope(k(x)), v(x)))``. With
the other fast paths on a packed training pass that is four or five module calls (each
projection a peft layer or frozen linear with the fast path's per-call checks), the attention
interface's lookup and the layout's placements, and 24-25 autograd nodes: the q/k/v node (or
three), two RoPE nodes, two placements of the keys and values, the fused attention, the o node,
and the views, transposes and split between them, each replayed backward. On CPU each costs
Python, dispatch and autograd bookkeeping between the kernels, which on an AMX CPU are a third
of a step (benchmarks/RESULTS.md, "Where a bench step's time goes"). Here one node runs the
same kernels in the same order on the same operands: the projections as their modules' nodes
compute them (:func:`~tunesmith.train.fastpath.lora_linear.project`; q, k and v stacked where
:mod:`~tunesmith.train.fastpath.lora_siblings` stacks them), RoPE in its kernel
(:func:`~tunesmith.train.fastpath.rope.native_rope`), the keys and values placed as
:func:`~tunesmith.train.fastpath.packed_attention.place_rows` places them, and the attention in
:mod:`~tunesmith.train.fastpath.fused_attention`'s kernel; the dropout masks are drawn in the
module calls' order and the input gradients of separate projections added in autograd's. Outputs
and every gradient equal the module calls' bit for bit, and it keeps what they kept
(``tests/train/fastpath/test_attention_block.py``). Measured (benchmarks/RESULTS.md, "An
attention block as one node"): a block's forward and backward 0.79-0.85x the time at narrow
widths, 0.94-0.96x at the demo's; ~11-20 ms of per-call work off a 30-layer step.

Per call (:func:`plan`), only where all of that is what the module calls would run: a
``LlamaAttention``, ``MistralAttention`` or ``Qwen2Attention`` (that class's own forward, under
RoPE's class swap, which calls :func:`run`; Qwen3's q/k norms and other classes keep their
calls), training with gradients, bf16 on CPU, tunesmith's grouped attention on a packed pass
whose layout applies and whose attention runs fused (AMX or AVX512-BF16, head widths of
multiples of 32), no attention dropout or cache, RoPE's kernel taking ``cos`` and ``sin``, and
every projection frozen (:func:`~tunesmith.train.fastpath.frozen_linear.takes`, a bias
allowed) or a LoRA projection of the fast path (:func:`~tunesmith.train.fastpath.lora.takes`,
no dropout or tunesmith's), none hooked. Anything else keeps the module calls, which are also
the reference path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from tunesmith.data.packing import PADDING_KWARG
from tunesmith.train.fastpath import attention, frozen_linear, fused_attention, lora, native
from tunesmith.train.fastpath.lora_linear import project, project_back
from tunesmith.train.fastpath.lora_linear import sides as lora_sides
from tunesmith.train.fastpath.lora_siblings import ATTR as SIBLINGS
from tunesmith.train.fastpath.packed_attention import PackedLayout, place_rows, place_rows_backward
from tunesmith.train.fastpath.rope import native_rope

INPUTS = ("q_proj", "k_proj", "v_proj")


@functools.cache
def _forwards() -> frozenset:
    """The attention forwards this node computes: Llama's, and Mistral's and Qwen2's, which
    differ from it only in handing the attention function a ``sliding_window`` that the
    grouped attention does not read (a sliding mask is the mask it is given)."""
    from transformers.models.llama.modeling_llama import LlamaAttention
    from transformers.models.mistral.modeling_mistral import MistralAttention
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

    return frozenset(c.forward for c in (LlamaAttention, MistralAttention, Qwen2Attention))


@dataclass
class _Projection:
    """One node's projection: frozen (``scales`` None) or LoRA with ``n_ab`` A and B weights;
    ``dropout`` the module that draws its branch's mask, ``mask`` the drawn ``(mask, scale)``."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    scales: tuple[float, ...] | None = None
    n_ab: int = 0
    dropout: object = None
    mask: object = None


@dataclass
class Block:
    """What :class:`AttentionBlock` computes: the input projections (one stacked q/k/v with
    column ``widths``, or q, k and v), the output projection, the heads and the pass's layout."""

    inputs: tuple[_Projection, ...]
    widths: tuple[int, ...] | None
    output: _Projection
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    layout: PackedLayout


def _projection(module: nn.Module, x: torch.Tensor) -> tuple[_Projection, tuple] | None:
    """``module`` as a projection of the node for input ``x`` and its ``(A, B)``; None where it
    takes no fast path now."""
    if frozen_linear.takes(module, x, bias=True):
        return _Projection(module.weight, module.bias), ()
    if (side := lora.branch(module, x)) is None:
        return None
    weight, bias, scale, ab, drop = side
    return _Projection(weight, bias, scale, len(ab), drop), ab


def _inputs(module: nn.Module, x: torch.Tensor) -> tuple | None:
    """q, k and v for input ``x`` as ``(projections, ab, widths)``: their sibling group's one
    stacked projection and its column ``widths`` where they are stacked and take it now, else
    each its own projection (``widths`` None); None where one takes no fast path."""
    members = [getattr(module, name) for name in INPUTS]
    group = members[0].__dict__.get(SIBLINGS)
    if group is None or group.members != members:
        found = [_projection(m, x) for m in members]
        if any(p is None for p in found):
            return None
        return tuple(p[0] for p in found), tuple(t for p in found for t in p[1]), None
    if any(m._forward_hooks or m._forward_pre_hooks for m in members):
        return None
    if (stack := group.stacked(x)) is None:
        return None
    weight, bias, scales, ab = stack
    return (_Projection(weight, bias, scales, len(ab)),), ab, group.widths


def plan(module: nn.Module, kwargs: dict) -> tuple[Block, tuple] | None:
    """``(block, ab)`` for :class:`AttentionBlock` where ``module`` (an attention module
    called with ``kwargs``, as a decoder layer calls it) runs its whole forward through it now,
    every dropout mask drawn; None to run the module calls (nothing drawn)."""
    x = kwargs.get("hidden_states")
    mask, position_ids = kwargs.get("attention_mask"), kwargs.get("position_ids")
    if any(v is None for v in (x, mask, position_ids, kwargs.get("position_embeddings"))):
        return None
    if any(kwargs.get(k) is not None for k in ("cache", "past_key_values", "past_key_value")):
        return None  # the names transformers gave the cache over its versions
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return None  # grouped attention refuses these
    if not (module.training and torch.is_grad_enabled() and x.dim() == 3 and native.runs_on(x)):
        return None
    caches = getattr(module, attention.CACHES, None)
    if caches is None or module.config._attn_implementation != attention.NAME:
        return None
    if module.attention_dropout:
        return None
    d = module.head_dim
    head = x.new_empty(()).expand(d)  # a head's row, as a shape
    if not fused_attention.runs(head, head, head, module.scaling):
        return None  # the grouped attention would not run the fused kernel
    cos, sin = kwargs["position_embeddings"]
    B, T, _ = x.shape
    if not _rope_takes(cos, sin, x, B, T, d):
        return None
    if (found := _inputs(module, x)) is None:
        return None
    inputs, ab, stacked = found
    q_width, kv_width, v_width = stacked or tuple(p.weight.shape[0] for p in inputs)
    if q_width % d or kv_width % d or v_width != kv_width:
        return None
    heads, kv_heads = q_width // d, kv_width // d
    probe = x.new_empty(()).expand(B, T, heads * d)  # the o projection's input, as a shape
    out = _projection(module.o_proj, probe)
    if out is None or (not ab and not out[1] and not x.requires_grad):
        return None  # nothing to differentiate
    tokens = kwargs.get(PADDING_KWARG)
    layout = caches.layouts.get(mask, position_ids, heads, kv_heads, x.dtype, tokens)
    if layout is None:
        return None
    drawn = [(p, x) for p in inputs] + [(out[0], probe)]  # the module calls' order, o last
    for p, at in drawn:
        p.mask = None if p.dropout is None else p.dropout.draw(at)
    block = Block(inputs, stacked, out[0], heads, kv_heads, d, float(module.scaling), layout)
    return block, (*ab, *out[1])


def _rope_takes(cos, sin, x, B: int, T: int, d: int) -> bool:
    """Whether RoPE's kernel takes ``cos`` and ``sin`` (b or 1, t, d) for these queries."""
    return (
        cos.dim() == 3 and cos.shape == sin.shape and cos.stride() == sin.stride()
        and cos.shape[0] in (1, B) and tuple(cos.shape[1:]) == (T, d)
        and cos.stride(-1) == 1 and cos.dtype == sin.dtype == x.dtype
        and native.runs_on(cos, sin)
    )  # fmt: skip


class AttentionBlock(torch.autograd.Function):
    """``x -> o(attend(rope(q(x)), rope(k(x)), v(x)))`` on a packed pass; see the module doc.

    ``apply(x, cos, sin, block, *ab)`` with :func:`plan`'s ``block`` and ``ab``.
    """

    @staticmethod
    def forward(ctx, x, cos, sin, block: Block, *ab):
        B, T, _ = x.shape
        d, layout = block.head_dim, block.layout
        x2 = x.reshape(-1, x.shape[-1])
        sides = lora_sides([p.n_ab for p in (*block.inputs, block.output)], ab)
        kept, drops, parts = [], [], []
        for p, side in zip(block.inputs, sides, strict=False):
            out, x_branch, h, drop = project(x2, p.weight, p.bias, p.scales, p.mask, side)
            kept += [x_branch, h]
            drops.append(drop)
            out = out.view(B, T, -1)
            parts += out.split(block.widths, dim=-1) if block.widths else [out]
        q, k, v = (t.view(B, T, -1, d).transpose(1, 2) for t in parts)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = native_rope(q, cos, sin), native_rope(k, cos, sin)
        # The layout's placements and attention, as attend_fused runs them.
        k_rows, v_rows = (t.transpose(1, 2).reshape(-1, d) for t in (k, v))
        slots, shared = layout.kv_slots.view(-1), (layout.shared_rows, layout.shared_slots)
        n = layout.n * block.kv_heads
        k = place_rows(k_rows, slots, *shared, layout.kv_source).view(n, -1, d).contiguous()
        v = place_rows(v_rows, slots, *shared, layout.kv_source).view(n, -1, d).contiguous()
        q = q.transpose(1, 2).reshape(-1, d).contiguous()
        out, lse, ctx.tiles = fused_attention.forward(q, layout.q_source, k, v, block.scale)
        a2 = out.view(B, T, -1).contiguous().view(B * T, -1)
        o = block.output
        out, a_branch, h_o, drop_o = project(a2, o.weight, o.bias, o.scales, o.mask, sides[-1])
        ctx.save_for_backward(
            *kept, q, k, v, lse, cos, sin, layout.q_source, slots, *shared, a_branch, h_o, *ab
        )  # the frozen weights are the block's (parameters: saving them keeps nothing more)
        ctx.block, ctx.drops, ctx.drop_o, ctx.x_shape = block, drops, drop_o, x.shape
        return out.view(B, T, -1)

    @staticmethod
    def backward(ctx, grad):
        block = ctx.block
        saved = list(ctx.saved_tensors)
        n_in = len(block.inputs)
        kept, saved = saved[: 2 * n_in], saved[2 * n_in :]
        q, k, v, lse, cos, sin, q_source, slots, shared_rows, shared_slots = saved[:10]
        a_branch, h_o = saved[10:12]
        ab = saved[12:]
        sides = lora_sides([p.n_ab for p in (*block.inputs, block.output)], ab)
        B, T, _ = ctx.x_shape
        d = block.head_dim
        g2 = grad.reshape(-1, grad.shape[-1])
        o = block.output
        want_dx = ctx.needs_input_grad[0]
        # The attention's gradient is wanted where q, k or v train or x wants one: as in the
        # module calls, where o's node then has no input gradient to give.
        wanted = want_dx or any(p.scales is not None for p in block.inputs)
        d_a, grads_o = project_back(
            g2, a_branch, h_o, o.weight, o.scales, ctx.drop_o, sides[-1], wanted
        )
        if not wanted:
            return None, None, None, None, *grads_o
        dq, dk, dv = fused_attention.backward(
            d_a.view(-1, d), q, q_source, k, v, lse, block.scale, ctx.tiles
        )
        dk, dv = (
            place_rows_backward(t.reshape(-1, d), slots, shared_rows, shared_slots)
            for t in (dk, dv)
        )
        dq = native_rope(dq.view(B, T, -1, d).transpose(1, 2), cos, sin, backward=True)
        dk = native_rope(dk.view(B, T, -1, d).transpose(1, 2), cos, sin, backward=True)
        parts = [t.transpose(1, 2).reshape(B * T, -1) for t in (dq, dk)] + [dv.view(B * T, -1)]
        if block.widths:  # one stacked projection: its gradient is the parts side by side
            parts = [torch.cat(parts, dim=-1)]
        dx, grads = None, []
        for i in reversed(range(n_in)):  # autograd's order: the last projection's first
            x_branch, h = kept[2 * i], kept[2 * i + 1]
            p = block.inputs[i]
            dxi, g = project_back(
                parts[i], x_branch, h, p.weight, p.scales, ctx.drops[i], sides[i], want_dx
            )
            grads = g + grads
            if want_dx:
                dx = dxi if dx is None else dx.add_(dxi)
        dx = None if dx is None else dx.view(ctx.x_shape)
        return dx, None, None, None, *grads, *grads_o


def run(module: nn.Module, cls: type, args: tuple, kwargs: dict):
    """``module``'s forward through :class:`AttentionBlock` where ``cls`` (its class under
    RoPE's swap) has one of :func:`_forwards` and :func:`plan` takes the call:
    ``(output, None)`` as the forward returns it; else None."""
    if args or cls.forward not in _forwards():
        return None
    found = plan(module, kwargs)
    if found is None:
        return None
    block, ab = found
    cos, sin = kwargs["position_embeddings"]
    return AttentionBlock.apply(kwargs["hidden_states"], cos, sin, block, *ab), None
