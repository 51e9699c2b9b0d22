"""Speed choices that depend on the device: the attention kernel and the compute context.

The attention kernel was measured on the demo (SmolLM2-135M, LoRA q/v, batch 8 of ~75-token
records) on a 2-core bf16 CPU; see benchmarks/RESULTS.md, "Training throughput vs TRL": torch's
CPU flash-attention kernel behind ``sdpa`` is slow for short rows (its backward alone took
~19% of a step); plain ``eager`` attention (matmul + softmax) made a step ~16-19% faster. Eager
keeps the b x heads x s x s probabilities for the backward, so it is chosen only on CPU and
only up to ``EAGER_MAX_SEQ_LEN``; the memory plan is made for the same kernel
(``train_attention`` feeds both). On CUDA, sdpa's fused kernels win. After loading,
:func:`tunesmith.train.fastpath.apply_fast_paths` swaps eager for the grouped kernel where the
model's attention is the plain formula, and owns how CPU micro-batches are cut into passes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tunesmith.methods.base import MethodSpec

EAGER_MAX_SEQ_LEN = 512  # above this the s^2 probabilities cost more memory than eager saves time


def train_attention(device: torch.device, seq_len: int) -> str:
    """The attention implementation training loads the model with (``eager`` or ``sdpa``)."""
    return "eager" if device.type == "cpu" and seq_len <= EAGER_MAX_SEQ_LEN else "sdpa"


def adapter_autocast(method: MethodSpec | str, precision: str) -> bool:
    """Run LoRA adapters in the compute dtype (fp32 master weights, bf16 math) instead of fp32.

    ``method`` is a :class:`~tunesmith.methods.base.MethodSpec` or a registered name; only
    methods whose spec says ``autocast_adapters`` (the plain ``B(A(dropout(x)))·scale``
    forward, and DoRA's; the other tuners keep peft's own casting) qualify.

    peft casts every adapter input to the adapter's fp32 dtype, so each targeted projection
    pays a cast of its input, an fp32 dropout and fp32 matmuls, and keeps the fp32 copy for the
    backward. Under autocast with peft's input casting off, the same adapter computes in bf16
    from the bf16 activations (the fp32 weights are cast, which is tiny at rank r): half the
    adapter activation memory at the same speed. This is the usual mixed-precision recipe
    (TRL's bf16 mode does the same for the whole model).
    """
    if isinstance(method, str):
        from tunesmith.methods import get_method

        method = get_method(method)
    return method.autocast_adapters and precision in ("bf16", "fp16")


def compute_context(
    model, device: torch.device, autocast_dtype, keep_input_dtype: bool, layers=None
):
    """The context a training forward runs in: autocast, and peft's input casting off if asked.

    ``layers``: :func:`tuner_layers` of ``model``, where the caller keeps them (a training loop
    enters this context once per pass); found here otherwise.
    """
    stack = contextlib.ExitStack()
    if autocast_dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=autocast_dtype))
    if keep_input_dtype:
        stack.enter_context(_input_casting_off(tuner_layers(model) if layers is None else layers))
    return stack


def tuner_layers(model) -> tuple:
    """The peft layers of ``model`` (``BaseTunerLayer``), whose input casting
    :func:`compute_context` turns off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return tuple(m for m in model.modules() if isinstance(m, BaseTunerLayer))


@contextlib.contextmanager
def _input_casting_off(layers):
    # peft.helpers.disable_input_dtype_casting does this on a walk over every module of the
    # model on entry and again on exit: 1.7 ms a pass on the bench's ~1,000-module model for
    # the same flag on the same layers (benchmarks/RESULTS.md, "Where a bench step's time goes").
    saved = [m.cast_input_dtype_enabled for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for m, value in zip(layers, saved, strict=True):
            m.cast_input_dtype_enabled = value
