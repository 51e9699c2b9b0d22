"""Packed attention's causal attention in one call each way on AMX tiles.

:func:`~tunesmith.train.fastpath.packed_attention.causal_attention` runs the layout's attention
(``(n*kv, g*L, d)`` queries, ``(n*kv, L, d)`` keys and values; query row ``r`` sees key slots
``0 .. r % L``) through torch's batched products around the causal softmax kernel. Each of
those writes or reads a ``(n*kv, g*L, L)`` tensor, larger than L2 for a training pass, and
oneDNN runs the small batched products far below the tiles' rate. Where the CPU has AMX tiles
(:func:`on_tiles`), ``native/amx_attention.cpp`` does the whole attention per 32-query chunk in
cache instead, reading the queries from the tokens' rows and writing the output back to them
(no layout copies of either): a step 0.95-0.96x the time on the AMX Xeon
(benchmarks/RESULTS.md, "Causal attention on AMX tiles"). The backward keeps only each query's
log-sum-exp besides q, k and v, and recomputes the probabilities from it.

Not bit for bit the products-and-softmax path (its scores stay fp32 where torch rounds them to
bf16), but at least as close to fp64 attention (``tests/train/fastpath/test_amx_attention.py``).
"""

from __future__ import annotations

import torch

from tunesmith.train.fastpath import native, row_split


class _TileAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, source, k, v, scale: float):
        out, lse = native.kernels().amx_causal_attention(q, source, k, v, scale)
        ctx.save_for_backward(q, source, k, v, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, source, k, v, lse = ctx.saved_tensors
        kernels = native.kernels()
        dq, dk, dv = kernels.amx_causal_attention_backward(
            grad.contiguous(), q, source, k, v, lse, ctx.scale
        )
        return dq, None, dk, dv, None


def on_tiles(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> bool:
    """Whether this attention runs on the tiles: a head width that is a multiple of 32, a
    positive scale, and :func:`~tunesmith.train.fastpath.row_split.tiles_take` (bf16 CPU
    tensors, AMX, no recorder of torch's products)."""
    return query.shape[-1] % 32 == 0 and scale > 0 and row_split.tiles_take(query, key, value)


def attend(
    q: torch.Tensor, source: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """The layout's causal attention where :func:`on_tiles`: ``q`` the tokens' ``(rows, d)``
    query rows, ``source`` each query slot's row of them (-1 for padding,
    ``PackedLayout.q_source``), ``k``/``v`` the layout's ``(n*kv, L, d)``; returns the output
    rows in ``q``'s order."""
    return _TileAttention.apply(q.contiguous(), source, k.contiguous(), v.contiguous(), scale)
