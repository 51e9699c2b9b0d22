"""Gradient-norm clipping for the training loop: torch's, or two calls into tunesmith's CPU
kernels where the gradients are all fp32 CPU tensors.

On CPU ``torch.nn.utils.clip_grad_norm_`` dispatches a norm and a multiply per gradient and
moves each norm to one device in Python: for the demo's 420 LoRA tensors (30 layers, seven
projections, A and B) ~850 ops, 1.56 ms warm and ~4.7 ms a step after the backward. Here the
squared norms are summed in one kernel call (fp32 lanes per tensor, the tensors added in double
in their order) and the gradients scaled in one more, only when the norm is over ``max_norm``:
``clip_grad_norm_`` multiplies by ``min(max_norm / (norm + 1e-6), 1)`` even when that is 1,
which changes nothing. 0.115 ms warm; ~2% of a step of a 30-layer hidden-64 model (paired A/B,
benchmarks/RESULTS.md, "Switches read once per value, the gradient clip in two kernel calls").

The norm equals torch's within fp32 rounding (its per-tensor norms sum in another order), so a
clipped step's gradients differ from torch's by that rounding of the scale. Distributed runs
(sharded or replicated gradients: torch's clip reduces across ranks), CUDA, other dtypes and
runs without the kernels (``TUNESMITH_NATIVE=0``) keep torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tunesmith.train.fastpath import native

EPS = 1e-6  # torch's: the scale is max_norm / (norm + EPS)
Clip = Callable[[Sequence[torch.nn.Parameter], float], "torch.Tensor | float"]


def clipper(device: torch.device, distributed: bool) -> Clip:
    """The loop's clip: :func:`clip_grad_norm` in one CPU process, else torch's (which reduces
    the norm across ranks and runs on CUDA)."""
    if device.type == "cpu" and not distributed:
        return clip_grad_norm
    return torch.nn.utils.clip_grad_norm_


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor | float:
    """Scale the gradients of ``params`` so that their joint L2 norm is at most ``max_norm``;
    the norm before scaling (a float here, torch's tensor where torch's clip ran)."""
    grads = [p.grad for p in params if p.grad is not None]
    kernels = native.kernels() if grads else None
    norm_sq = -1.0 if kernels is None else kernels.grad_sum_squares(grads)
    if norm_sq < 0:  # no kernels, or a gradient that is not a contiguous fp32 CPU tensor
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = math.sqrt(norm_sq)
    scale = max_norm / (norm + EPS)
    if math.isfinite(norm) and scale < 1.0:  # non-finite: the loop stops or skips the step
        kernels.grad_scale_(grads, scale)
    return norm
