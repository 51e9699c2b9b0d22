"""Cross-entropy from bf16 logits in row chunks, without fp32 copies of the whole (N, V) logits.

The reference, ``F.cross_entropy(logits.float(), ...)``, keeps an fp32 copy of the logits and
its fp32 log-softmax for the backward, and the backward builds two more fp32 ``(N, V)``
tensors (the one-hot scatter and the softmax gradient) before casting to bf16. With
SmolLM2's 49,152-token vocabulary a 300-target CPU pass makes each of those 59 MB, at the
memory peak of the pass (the start of the backward). Here the forward and the backward each
upcast ``CHUNK`` rows at a time (6 MB in fp32, cache-sized), so only the bf16 logits are kept
and the gradient is written straight to bf16.

The math is the reference's: log-softmax in fp32 of the bf16 logits; gradient
``softmax - onehot`` in fp32, scaled, then rounded to the logits' dtype (as the reference's
``.float()`` backward rounds it). Measured on (150, 49152) bf16 logits with the head matmul
(2 CPU threads, forward + backward): 60-63 ms vs 64-68 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 32  # rows upcast at a time: 32 x 49152 x 4 B = 6 MB


class _ChunkedTokenNll(torch.autograd.Function):
    """Per-row ``-log_softmax(logits.float())[i, targets[i]]``, ``CHUNK`` rows upcast at a time."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nll = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for r in range(0, logits.shape[0], CHUNK):
            log_probs = torch.log_softmax(logits[r : r + CHUNK].float(), dim=-1)
            nll[r : r + CHUNK] = -log_probs.gather(1, targets[r : r + CHUNK, None])[:, 0]
        ctx.save_for_backward(logits, targets)
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets = ctx.saved_tensors
        out = torch.empty_like(logits)
        minus_one = torch.full((CHUNK, 1), -1.0, device=logits.device)
        for r in range(0, logits.shape[0], CHUNK):
            probs = torch.softmax(logits[r : r + CHUNK].float(), dim=-1)
            t = targets[r : r + CHUNK, None]
            probs.scatter_add_(1, t, minus_one[: t.shape[0]])  # softmax - onehot
            out[r : r + CHUNK] = probs.mul_(grad[r : r + CHUNK, None])
        return out, None


def chunked_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N,)`` fp32 token NLLs of bf16/fp16 ``(N, V)`` logits (the preference log-probs)."""
    return _ChunkedTokenNll.apply(logits, targets)


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of ``-log_softmax(logits.float())[i, targets[i]]`` (fp32 scalar).

    Args:
        logits: ``(N, V)`` in bf16 or fp16 (fp32 logits gain nothing: use ``F.cross_entropy``).
        targets: ``(N,)`` class indices, no ignore index (select the trained rows first).
    """
    return chunked_token_nll(logits, targets).sum()


def reference_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference: summed ``F.cross_entropy`` over fp32 logits (stable in any dtype)."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _chunks_pay(logits: torch.Tensor) -> bool:
    """Chunking saves the fp32 copies of half-precision logits; on CPU it is also no slower."""
    return logits.device.type == "cpu" and logits.dtype in (torch.bfloat16, torch.float16)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N,)`` fp32 token NLLs as the device does them best (see :func:`cross_entropy_sum`)."""
    if _chunks_pay(logits):
        return chunked_token_nll(logits, targets)
    return F.cross_entropy(logits.float(), targets, reduction="none")


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed token loss as the device does it best: :func:`chunked_cross_entropy` for
    bf16/fp16 logits on CPU (same math, no fp32 copies of the whole logits), else the
    reference. The CPU fast paths train with this; evaluation uses it too."""
    if _chunks_pay(logits):
        return chunked_cross_entropy(logits, targets)
    return reference_cross_entropy(logits, targets)
