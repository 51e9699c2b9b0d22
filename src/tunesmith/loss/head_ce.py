"""The loss's last step from hidden states: the frozen vocabulary head and its cross-entropy as
one autograd node, the gradient formed while the forward still holds the logits.

The loss's last step is ``logits = h Wᵀ`` (a frozen head: the LoRA family, IA3, the prompt
methods) and ``-log_softmax(logits)[target]`` in row chunks (:mod:`~tunesmith.loss.chunked_ce`).
There the backward upcasts each chunk of the saved bf16 logits a second time, runs a softmax
over the 49,152-token vocabulary again, and writes a new ``(N, V)`` gradient beside the saved
logits. The loss is the last op of the graph, so its gradient with respect to the logits is
known up to the one scale the backward brings: ``softmax - onehot``. Here each chunk's fp32
log-softmax gives the loss, is exponentiated in place into the softmax, has the one-hot
subtracted and is written over its own logits in bf16. The backward is then one product,
``(softmax - onehot) W``, scaled per row by the incoming gradient: no second upcast, softmax
or ``(N, V)`` buffer. On the demo's head (300 rows x 49,152, 2-core AMX Xeon) forward +
backward take 50-51 ms instead of 63-72 ms (benchmarks/RESULTS.md, "The head's gradient in
its forward").

Rounding: the reference rounds ``(softmax - onehot) * g`` to bf16 once and the product's output
once; here ``softmax - onehot`` is rounded, then the product's output, then its scaling by
``g``, one bf16 rounding more (the head's input gradient 0.0024 from fp32 instead of 0.0017 on
that head). The losses are the same values: the same log-softmax of the same logits.

Taken only where it is the same math and pays: on CPU, grad enabled on a half-precision input,
the head a frozen ``nn.Linear`` without bias in the input's dtype, no distributed engine.
Evaluation, a trained head (full fine-tuning), a LoRA-wrapped head, fp32 models, torchrun and
CUDA keep ``head(h)`` and the chunked (or, off CPU, the reference) cross-entropy of
:mod:`~tunesmith.loss.chunked_ce`. How the node runs is a parameter (:class:`HeadKernels`):
its two products (``mm``; the CPU fast paths pass the row blocks they run every frozen GEMM in,
``train/fastpath/row_split.py``) and its softmax step (``nll_``; they pass tunesmith's CPU
kernel, one read of each bf16 row instead of an fp32 copy and four passes: bit for bit on the
bench's logits, within fp32 rounding where its sum is added in another order), or the whole
node in one call (``fused``, :class:`_FusedHeadNll`: on AMX CPUs the fast paths pass
tunesmith's kernel, which never writes the logits, ``train/fastpath/tile_head.py``). The
preference log-probs take the same node per token (:func:`head_token_nll`), and without
gradients (their reference) the same products and softmax step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tunesmith.loss.chunked_ce import CHUNK, cross_entropy_sum, reference_cross_entropy, token_nll

HALF = (torch.bfloat16, torch.float16)
# The head's products run on a row count rounded up to this. The trained-token count of a pass
# changes from pass to pass (76 of the demo's 111 passes met a new one), and oneDNN builds a
# primitive for every new GEMM shape: +8 ms forward and +11 ms backward for the demo's head.
# Rounded, 8 shapes serve the whole run for 5.4% more rows: over the demo's sequence of passes
# the head takes 4.0-4.1 s instead of 5.2 s (benchmarks/RESULTS.md). The padding rows are
# zero and their outputs dropped; the real rows' logits came out bit-equal (42-387 rows), the
# backward's product may round differently for a small count (it did at 42).
ROW_BUCKET = 32
Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (a, b) -> a @ b
# (h (N, C), weight (V, C), targets (N,)) -> (fp32 NLLs (N,), the gradient of their sum for h)
FusedNll = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (logits (N, V), targets (N,)) -> fp32 NLLs (N,), the logits overwritten with softmax - onehot
SoftmaxNll = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def softmax_nll_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row ``-log_softmax(logits)[i, targets[i]]`` in fp32, and ``logits`` overwritten with
    ``softmax - onehot`` (rounded once to their dtype): 32-row chunks in fp32, so that no
    ``(N, V)`` fp32 copy exists. The CPU fast paths pass tunesmith's kernel for bf16, which
    reads each row from memory once (``train/fastpath/native``)."""
    rows = logits.shape[0]
    nll = torch.empty(rows, dtype=torch.float32, device=logits.device)
    minus_one = torch.full((CHUNK, 1), -1.0, device=logits.device)
    for r in range(0, rows, CHUNK):
        end = min(r + CHUNK, rows)
        log_probs = torch.log_softmax(logits[r:end].float(), dim=-1)
        t = targets[r:end, None]
        nll[r:end] = -log_probs.gather(1, t)[:, 0]
        probs = log_probs.exp_().scatter_add_(1, t, minus_one[: end - r])
        logits[r:end] = probs
    return nll


@dataclass(frozen=True)
class HeadKernels:
    """How the fused head's pieces run.

    Attributes:
        mm: Its two products (``torch.mm``, or the CPU fast paths' row blocks).
        nll_: How the logits become NLLs and ``softmax - onehot`` (:func:`softmax_nll_`, or
            the fast paths' kernel).
        fused: Where given, the whole node in one call instead of ``mm`` and ``nll_`` (the
            caller checks it takes the tensors: the fast paths' AMX kernel).
    """

    mm: Product = torch.mm
    nll_: SoftmaxNll = softmax_nll_
    fused: FusedNll | None = None


TORCH = HeadKernels()  # torch's products and the softmax step above


def _bucketed_logits(h: torch.Tensor, weight: torch.Tensor, mm: Product) -> torch.Tensor:
    """``h Wᵀ`` over ``h``'s rows and zero rows up to a multiple of :data:`ROW_BUCKET`."""
    rows = h.shape[0]
    padded = -(-rows // ROW_BUCKET) * ROW_BUCKET
    if padded != rows:  # zero rows: their logits are computed, and never read as a loss
        h = torch.cat([h, h.new_zeros((padded - rows, h.shape[1]))])
    return mm(h, weight.t())


class _HeadNll(torch.autograd.Function):
    """Per-row ``-log_softmax(h Wᵀ)[i, targets[i]]`` with ``W`` frozen; gradient for ``h``."""

    @staticmethod
    # h and the weight share one dtype (fuses()); autocast is off so that the forward's
    # product takes the dtypes the backward's, which runs outside autocast, takes.
    @torch.autocast("cpu", enabled=False)
    def forward(
        ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mm: Product,
        nll_: SoftmaxNll,
    ):  # fmt: skip
        rows = h.shape[0]
        logits = _bucketed_logits(h, weight, mm)  # (padded, V), becomes softmax - onehot
        nll = nll_(logits[:rows], targets)  # real rows only
        logits[rows:].zero_()  # the padding rows take no gradient
        ctx.save_for_backward(logits, weight)
        ctx.mm, ctx.rows = mm, rows
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dlogits, weight = ctx.saved_tensors
        dh = ctx.mm(dlogits, weight)[: ctx.rows]  # (N, C)
        return dh.mul_(grad[:, None].to(dh.dtype)), None, None, None, None


class _FusedHeadNll(torch.autograd.Function):
    """:class:`_HeadNll` computed whole by one call that returns the NLLs and the gradient of
    their sum for ``h`` (the CPU fast paths' AMX kernel): only ``(N, C)`` is kept for the
    backward, which scales it per row in fp32 and rounds once."""

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, fused: FusedNll):
        nll, dh = fused(h, weight, targets)
        ctx.save_for_backward(dh)
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (dh,) = ctx.saved_tensors
        return (dh.float() * grad[:, None]).to(dh.dtype), None, None, None


def fuses(head: nn.Module, h: torch.Tensor) -> bool:
    """Whether ``head(h)``'s loss can take :class:`_HeadNll` (see the module docstring)."""
    return torch.is_grad_enabled() and h.requires_grad and plain_head(head, h)


def plain_head(head: nn.Module, h: torch.Tensor) -> bool:
    """Whether ``head`` is a frozen ``nn.Linear`` without bias in ``h``'s half dtype on CPU, and
    ``h`` ``(N, C)``: its logits can be ``h Wᵀ`` by any product, outside the module's call."""
    if h.dim() != 2:
        return False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # DDP, FSDP and DeepSpeed (ZeRO-3 even on one rank) decide where the head's weight
        # lives between its module's calls; only ``head(h)`` is sure to see it whole.
        return False
    if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.requires_grad:
        return False
    w = head.weight
    return (
        h.device.type == "cpu" and w.device == h.device and h.dtype in HALF and w.dtype == h.dtype
    )


def head_token_nll(
    head: nn.Module, h: torch.Tensor, targets: torch.Tensor, kernels: HeadKernels = TORCH
) -> torch.Tensor:
    """``(N,)`` fp32 token NLLs of ``head(h)`` (the preference log-probs): fused by ``kernels``
    where :func:`fuses`; without gradients, a :func:`plain_head`'s logits by ``kernels.mm`` and
    ``kernels.nll_`` (a scratch it overwrites); else
    :func:`~tunesmith.loss.chunked_ce.token_nll` of ``head(h)``."""
    if fuses(head, h):
        if kernels.fused is not None:
            return _FusedHeadNll.apply(h, head.weight, targets, kernels.fused)
        return _HeadNll.apply(h, head.weight, targets, kernels.mm, kernels.nll_)
    if not torch.is_grad_enabled() and plain_head(head, h):
        with torch.autocast("cpu", enabled=False):  # the head's own dtype, as _HeadNll
            logits = _bucketed_logits(h, head.weight, kernels.mm)[: h.shape[0]]
            return kernels.nll_(logits, targets)
    return token_nll(head(h), targets)


def head_cross_entropy_sum(
    head: nn.Module, h: torch.Tensor, targets: torch.Tensor, kernels: HeadKernels = TORCH
) -> torch.Tensor:
    """Summed token cross-entropy of ``head(h)`` (fp32 scalar): fused by ``kernels`` where
    :func:`fuses`, else :func:`~tunesmith.loss.chunked_ce.cross_entropy_sum` of ``head(h)``.

    Args:
        head: The vocabulary projection (``lm_head``).
        h: ``(N, C)`` hidden states of the trained positions.
        targets: ``(N,)`` next-token ids, no ignore index.
        kernels: How the fused node runs (:class:`HeadKernels`).
    """
    if fuses(head, h):
        return head_token_nll(head, h, targets, kernels).sum()
    return cross_entropy_sum(head(h), targets)


def reference_head_cross_entropy(
    head: nn.Module, h: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """:func:`~tunesmith.loss.chunked_ce.reference_cross_entropy` of ``head(h)``: the reference
    path's last step."""
    return reference_cross_entropy(head(h), targets)
