"""Packed attention's causal attention in one call each way on AMX tiles.

:func:`~tunesmith.train.fastpath.packed_attention.causal_attention` runs the layout's attention
(``(n*kv, g*L, d)`` queries, ``(n*kv, L, d)`` keys and values; query row ``r`` sees key slots
``0 .. r % L``) through torch's batched products around the causal softmax kernel. Each of
those writes or reads a ``(n*kv, g*L, L)`` tensor, larger than L2 for a training pass, and
oneDNN runs the small batched products far below the tiles' rate. Where the CPU has AMX tiles
(:func:`on_tiles`), ``native/amx_attention.cpp`` does the whole attention per 32-query chunk in
cache instead: a step 0.95-0.96x the time on the AMX Xeon (benchmarks/RESULTS.md, "Causal
attention on AMX tiles"). The backward keeps only each query's log-sum-exp besides q, k and v,
and recomputes the probabilities from it.

Not bit for bit the products-and-softmax path (its scores stay fp32 where torch rounds them to
bf16), but at least as close to fp64 attention (``tests/train/fastpath/test_amx_attention.py``).
"""

from __future__ import annotations

import torch

from tunesmith.train.fastpath import native, row_split


class _TileAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        out, lse = native.kernels().amx_causal_attention(q, k, v, scale)
        ctx.save_for_backward(q, k, v, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, lse = ctx.saved_tensors
        kernels = native.kernels()
        dq, dk, dv = kernels.amx_causal_attention_backward(
            grad.contiguous(), q, k, v, lse, ctx.scale
        )
        return dq, dk, dv, None


def on_tiles(q: torch.Tensor, scale: float) -> bool:
    """Whether these queries' attention runs on the tiles: the kernels' AMX code runs here
    (:func:`~tunesmith.train.fastpath.native.amx`), the head width is a multiple of 32, and no
    recorder of dispatched products listens (``row_split.through_torch``: the bench's
    shape-matched limit counts the attention's products through torch)."""
    return q.shape[-1] % 32 == 0 and scale > 0 and native.amx() and not row_split.torch_only()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The layout's causal attention of bf16 CPU q, k, v where :func:`on_tiles`."""
    return _TileAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), scale)
