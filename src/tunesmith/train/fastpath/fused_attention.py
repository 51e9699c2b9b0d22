"""Packed attention's causal attention in one kernel call each way, on AMX tiles or in
AVX512-BF16 dot products.

:func:`~tunesmith.train.fastpath.packed_attention.causal_attention` runs the layout's attention
(``(n*kv, g*L, d)`` queries, ``(n*kv, L, d)`` keys and values; query row ``r`` sees key slots
``0 .. r % L``) through torch's batched products around the causal softmax kernel. Each of
those writes or reads a ``(n*kv, g*L, L)`` tensor, larger than L2 for a training pass, and
oneDNN computes the full squares, the masked half too. Where :func:`runs`,
``native/causal_attention.cpp`` does the whole attention per 32-query chunk in cache instead,
reading the queries from the tokens' rows and writing the output back to them (no layout copies
of either), on AMX tiles where the CPU has them (a step 0.95-0.96x the time on the AMX Xeon;
benchmarks/RESULTS.md, "Causal attention on AMX tiles"; an AMX CPU has the dot products too, and
times both at a large call: :func:`_on_tiles`), else in AVX512-BF16 dot products, which
also skip the keys a block of 8 queries does not see (a demo step's attention ~90 -> ~41 ms on
the AMD EPYC; RESULTS.md, "Causal attention in AVX512-BF16 dot products"). The backward keeps
only each query's log-sum-exp besides q, k and v, and recomputes the probabilities from it.

Not bit for bit the products-and-softmax path (its scores stay fp32 where torch rounds them to
bf16), but at least as close to fp64 attention (``tests/train/fastpath/test_fused_attention.py``).
"""

from __future__ import annotations

import torch

from tunesmith.train.fastpath import kernel_choice, native, row_split


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, source, k, v, scale: float):
        out, lse, tiles = forward(q, source, k, v, scale)
        ctx.save_for_backward(q, source, k, v, lse)
        ctx.scale, ctx.tiles = scale, tiles
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, source, k, v, lse = ctx.saved_tensors
        dq, dk, dv = backward(grad, q, source, k, v, lse, ctx.scale, ctx.tiles)
        return dq, None, dk, dv, None


def forward(q, source, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The kernel's forward on contiguous operands (:func:`attend`'s): ``(out, lse, on
    tiles)``, what :func:`backward` takes besides the operands."""
    tiles = _on_tiles(q, source, k, v, scale)
    out, lse = native.kernels().causal_attention(q, source, k, v, scale, tiles=tiles)
    return out, lse, tiles


def backward(grad, q, source, k, v, lse, scale: float, tiles: bool):
    """The kernel's backward: ``(dq, dk, dv)`` for the output's gradient ``grad``."""
    kernels = native.kernels()
    return kernels.causal_attention_backward(
        grad.contiguous(), q, source, k, v, lse, scale, tiles=tiles
    )


def _on_tiles(q, source, k, v, scale: float) -> bool:
    """Whether this attention (forward, and so its backward) runs on AMX tiles: where the CPU
    has both tiles and dot products, the path measured faster, forward and backward together,
    for this head width and layout's block count
    (:mod:`~tunesmith.train.fastpath.kernel_choice`); else the tiles wherever they run."""
    tiles = native.amx()
    if not (tiles and native.bf16_dots()):
        return tiles
    kernels = native.kernels()

    def both_ways(on_tiles: bool) -> None:
        out, lse = kernels.causal_attention(q, source, k, v, scale, tiles=on_tiles)
        kernels.causal_attention_backward(out, q, source, k, v, lse, scale, tiles=on_tiles)

    def paths():
        return {"tiles": lambda: both_ways(True), "dots": lambda: both_ways(False)}

    key = ("attention", q.shape[1], k.shape[0], torch.get_num_threads())

    def large() -> bool:
        return kernel_choice.worth_measuring(q.shape[0], q.shape[1] * k.shape[0])

    return kernel_choice.choose(key, ("tiles", "dots"), "tiles", large, paths) == "tiles"


def runs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> bool:
    """Whether this attention runs in the kernel: a head width that is a multiple of 32, a
    positive scale, bf16 CPU tensors with the kernels on, AMX tiles
    (:func:`~tunesmith.train.fastpath.native.amx`) or AVX512-BF16
    (:func:`~tunesmith.train.fastpath.native.bf16_dots`) here, and no recorder of torch's
    products listening (:func:`~tunesmith.train.fastpath.row_split.through_torch`)."""
    if query.shape[-1] % 32 or scale <= 0 or not native.runs_on(query, key, value):
        return False
    return (native.amx() or native.bf16_dots()) and not row_split.torch_only()


def attend(
    q: torch.Tensor, source: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """The layout's causal attention where :func:`runs`: ``q`` the tokens' ``(rows, d)`` query
    rows, ``source`` each query slot's row of them (-1 for padding,
    ``PackedLayout.q_source``), ``k``/``v`` the layout's ``(n*kv, L, d)``; returns the output
    rows in ``q``'s order."""
    return _FusedAttention.apply(q.contiguous(), source, k.contiguous(), v.contiguous(), scale)
