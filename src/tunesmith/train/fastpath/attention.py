"""Eager attention for CPU training in fewer, cheaper ops: grouped queries, one fused score op.

Training on CPU uses eager attention (``train/speed.py`` says why). transformers' eager code
copies K and V once per query head (``repeat_kv``), scales and masks the scores in two more
ops, runs the softmax in fp32 and casts the probabilities back, and autograd replays each of
those backward. Here, with the same math:

- the ``g`` query heads that share a K/V head are laid side by side as one ``(g * q)``-row
  matrix, so K and V are used as they are (no copies, no summed gradients for the copies);
- the scores are one ``baddbmm``: ``mask + scale * Q K^T``. The additive mask, expanded to
  the grouped shape, is built once per forward pass and reused by every layer;
- the softmax runs on the bf16 scores with fp32 accumulation inside the kernel, and its
  output is rounded to bf16 as transformers rounds it. On packed passes with tunesmith's CPU
  kernels built, scaling, mask and softmax are one causal kernel pass each way instead
  (:func:`~tunesmith.train.fastpath.packed_attention.causal_attention`).

Measured on the demo's shapes (2 CPU threads, bf16, forward + backward): -22% to -26% per
layer. The output equals transformers' eager attention bit for bit in the forward; the
gradients differ within bf16 rounding (transformers' softmax backward runs in fp32). The
probabilities kept for the backward are bf16 (transformers keeps fp32 and bf16 copies), so the
memory plan, which counts eager's, stays an upper bound.

A packed row (several examples, position ids restarting at each) whose mask is exactly their
block-causal mask is attended per example instead of as one ``T x T`` product
(:mod:`tunesmith.train.fastpath.packed_attention`); that is how CPU training runs its passes.

It is registered with transformers' ``AttentionInterface`` under :data:`NAME` (with eager's
mask builder) and switched on by :func:`install` only for eager-attention models whose
attention is the plain formula (no logit soft-capping, no attention sinks). The per-pass caches
(expanded mask, packed layout) belong to the install: :func:`install` hands one
:class:`AttentionCaches` to every attention module of the model, and ``undo`` takes it back.
"""

from __future__ import annotations

import torch

from tunesmith.data.packing import PADDING_KWARG
from tunesmith.train.fastpath import fused_attention
from tunesmith.train.fastpath.packed_attention import LayoutCache, causal_attention
from tunesmith.train.fastpath.patch import Patch, skipped

NAME = "tunesmith_cpu"  # one of packing.PADDING_AWARE_ATTENTION: packed passes tell it the padding

# Model types whose attention module computes softmax(QK^T * scale + mask) V with grouped
# K/V heads and nothing else (soft-capping, sinks and scaled-norm variants are excluded).
PLAIN_ATTENTION_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3"})


class _GroupedMask:
    """The last expanded mask, reused while the same mask tensor comes back (one per pass)."""

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.key: tuple = ()
        self.grouped: torch.Tensor | None = None

    def get(self, mask: torch.Tensor, kv_heads: int, groups: int, kv_len: int, dtype):
        """``mask`` (b, 1, q, >= kv_len) as (b * kv_heads, groups * q, kv_len) in ``dtype``."""
        version = 0 if mask.is_inference() else mask._version  # inference tensors have none
        key = (version, mask.shape, kv_heads, groups, kv_len, dtype)
        if self.source is not mask or self.key != key:
            b, _, q, _ = mask.shape
            expanded = mask[:, :, None, :, :kv_len].expand(b, kv_heads, groups, q, kv_len)
            # Holding `mask` keeps its memory from being reused by another tensor.
            self.source, self.key = mask, key
            self.grouped = expanded.to(dtype).reshape(b * kv_heads, groups * q, kv_len)
        return self.grouped


class AttentionCaches:
    """What one forward pass builds once and every layer reuses: the grouped mask and the
    packed layout. Holding the last pass's tensors keeps their memory from being reused."""

    def __init__(self) -> None:
        self.masks = _GroupedMask()
        self.layouts = LayoutCache()

    def clear(self) -> None:
        """Drop the tensors of the last pass."""
        self.__init__()


CACHES = "_tunesmith_attention_caches"  # the attribute install() sets on attention modules


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention-function signature; returns ``(b, q, heads, d)`` output and the
    ``(b, heads, q, kv)`` probabilities, as ``eager_attention_forward`` does."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{NAME} attention has no soft-capping or attention sinks")
    b, heads, q_len, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # A module that install() did not reach (a direct call) gets caches for this call only.
    caches = getattr(module, CACHES, None) or AttentionCaches()
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None and position_ids is not None and q_len == kv_len:
        tokens = kwargs.get(PADDING_KWARG)  # where packing.attention_inputs passed it
        layout = caches.layouts.get(
            attention_mask, position_ids, heads, kv_heads, query.dtype, tokens
        )
        if layout is not None:  # packed rows: attend per example (packed_attention.py)
            fused = fused_attention.runs(query, key, value, scaling)
            if fused and not (dropout and module.training):
                return layout.attend_fused(query, key, value, scaling), None
            q, k, v = layout.gather(query, key, value)
            out = None if dropout and module.training else causal_attention(q, k, v, scaling)
            if out is None:
                out, _ = _attend(module, q, k.transpose(1, 2), v, layout.mask, scaling, dropout)
            return layout.scatter(out, b, q_len), None
    # Head h uses K/V head h // groups (repeat_kv's order), so a (b, kv, g, q, d) view of the
    # queries puts each K/V head's queries in one (g * q, d) block.
    q = query.reshape(b * kv_heads, groups * q_len, d)
    k_t = key.reshape(b * kv_heads, kv_len, d).transpose(1, 2)
    v = value.reshape(b * kv_heads, kv_len, d)
    mask = None
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend, as sdpa's boolean masks
            attention_mask = torch.zeros_like(attention_mask, dtype=q.dtype).masked_fill_(
                ~attention_mask, torch.finfo(q.dtype).min
            )
        mask = caches.masks.get(attention_mask, kv_heads, groups, kv_len, q.dtype)
    out, probs = _attend(module, q, k_t, v, mask, scaling, dropout)
    out = out.view(b, heads, q_len, d).transpose(1, 2).contiguous()
    return out, probs.view(b, heads, q_len, kv_len)


def _attend(module, q, k_t, v, mask, scaling, dropout) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(mask + scaling * q k^T) v`` over ``(rows, q, d)`` / ``(rows, d, kv)`` batches;
    returns the output and the probabilities."""
    if mask is None:
        scores = torch.bmm(q, k_t).mul_(scaling)
    else:
        scores = torch.baddbmm(mask, q, k_t, alpha=scaling)
    probs = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout, training=True)
    return torch.bmm(probs, v), probs


def register() -> str:
    """Make :data:`NAME` a valid ``attn_implementation`` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME


def _base(model: torch.nn.Module) -> torch.nn.Module:
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def runs_grouped(model: torch.nn.Module) -> bool:
    """Whether ``model`` (peft-wrapped or not) runs :data:`NAME` attention."""
    return getattr(getattr(_base(model), "config", None), "_attn_implementation", None) == NAME


def install(model: torch.nn.Module, caches: AttentionCaches | None = None) -> Patch:
    """Switch an eager-attention model with plain attention to :data:`NAME`.

    Only eager is replaced (sdpa and flash kernels were chosen for a reason, and the memory
    plan counted eager's probabilities, which this keeps fewer of). The attention modules
    (those with ``num_key_value_groups``, as transformers' eager code needs) share one
    :class:`AttentionCaches` (``caches``, or new ones); ``undo`` restores the implementation
    and takes the caches back.
    """
    base = _base(model)
    config = getattr(base, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl == NAME:
        return skipped(f"the model already runs {NAME} attention")
    if impl != "eager":
        return skipped(f"the model runs {impl} attention; only eager is replaced")
    if not plain_attention(config):
        model_type = getattr(config, "model_type", None)
        return skipped(
            f"model type {model_type!r} is not known to compute plain softmax attention "
            f"(known: {', '.join(sorted(PLAIN_ATTENTION_MODEL_TYPES))}; no soft-capping, no sinks)",
            expected=False,
        )
    caches = caches if caches is not None else AttentionCaches()
    modules = [m for m in base.modules() if hasattr(m, "num_key_value_groups")]
    for m in modules:
        setattr(m, CACHES, caches)
    base.set_attn_implementation(register())

    def undo() -> None:
        base.set_attn_implementation(impl)
        for m in modules:
            if CACHES in vars(m):
                delattr(m, CACHES)
        caches.clear()

    return Patch(1, undo)


def plain_attention(config) -> bool:
    """True when the model's attention is the formula :func:`grouped_attention` computes."""
    if getattr(config, "model_type", None) not in PLAIN_ATTENTION_MODEL_TYPES:
        return False
    return not (getattr(config, "attn_logit_softcapping", None) or getattr(config, "sinks", None))
