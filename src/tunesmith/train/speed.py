"""Speed choices that depend on the device: the attention kernel and how passes are cut.

Both were measured on the demo (SmolLM2-135M, LoRA q/v, batch 8 of ~75-token records) on a
2-core bf16 CPU; see benchmarks/RESULTS.md, "Training throughput vs TRL":

- Attention: torch's CPU flash-attention kernel behind ``sdpa`` is slow for short rows (its
  backward alone took ~19% of a step); plain ``eager`` attention (matmul + softmax) made a
  step ~16-19% faster. Eager keeps the b x heads x s x s probabilities for the backward, so
  it is chosen only on CPU and only up to ``EAGER_MAX_SEQ_LEN``; the memory plan is made for
  the same kernel (``train_attention`` feeds both). On CUDA, sdpa's fused kernels win. After
  loading, :func:`install_cpu_fast_paths` swaps eager for the grouped kernel of
  :mod:`tunesmith.train.cpu_attention` where the model's attention is the plain formula.
- Passes: on CPU each micro-batch runs as a few forward passes. A pass costs ~30-45 tokens'
  worth beyond its tokens (mostly reading the weights from memory again: a 2-token forward +
  backward of the demo model took ~114 ms); on CUDA kernel launches make extra passes
  expensive, so this is CPU only. A pass holds at most ``CPU_PASS_MAX_TOKENS`` tokens, which
  bounds the activation peak. Where the grouped attention runs, each pass is one packed,
  padding-free row (:func:`pack_cpu_passes`, :func:`tunesmith.data.packing.pack_into_passes`):
  the demo's ~2.6 padded passes per step become ~1.1. Elsewhere the micro-batch is cut into
  length-sorted padded passes (:func:`tunesmith.data.dataset.split_by_length`), which removes
  most padding (20% -> ~5%) but, at 2 threads, gains memory rather than speed (the padding
  saved and the extra passes cancel out; over 100 demo steps, caps of 384 to 640 tokens and
  per-pass costs of 32 to 64 tokens all priced a step within 1% of each other).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tunesmith.methods.base import MethodSpec

EAGER_MAX_SEQ_LEN = 512  # above this the s^2 probabilities cost more memory than eager saves time
CPU_PASS_OVERHEAD_TOKENS = 32.0  # measured: 16 and 48 were equally fast, 128 lost the gain
# Most tokens per CPU pass: a memory-for-speed trade within what the memory plan already
# allows (the plan checks the whole micro-batch, so a cap only lowers the peak below it).
# SmolLM2-135M keeps ~1 MB of activations per token at a pass's peak (bf16, grouped attention).
# Measured on the demo with packed passes (12 steps, 2 threads): 640 tokens -> 1.08 passes per
# step, -8 to -10% per step and +220 MB peak RSS (1.62 vs 1.40 GiB) against 384 -> 2 passes.
CPU_PASS_MAX_TOKENS = 640


def train_attention(device: torch.device, seq_len: int) -> str:
    """The attention implementation training loads the model with (``eager`` or ``sdpa``)."""
    return "eager" if device.type == "cpu" and seq_len <= EAGER_MAX_SEQ_LEN else "sdpa"


def split_overhead_tokens(device: torch.device) -> float | None:
    """Per-pass cost for :func:`~tunesmith.data.dataset.split_by_length`; None: do not split."""
    return CPU_PASS_OVERHEAD_TOKENS if device.type == "cpu" else None


def split_max_tokens(device: torch.device) -> int | None:
    """Most padded tokens per forward pass on CPU (bounds activation memory; None: no bound)."""
    return CPU_PASS_MAX_TOKENS if device.type == "cpu" else None


def install_cpu_fast_paths(model, device: torch.device) -> dict[str, int]:
    """On CPU, swap in the hand-fused training ops; returns how many modules each changed.

    - :mod:`~tunesmith.train.fast_dropout`: Bernoulli draws were ~8% of a demo step;
    - :mod:`~tunesmith.train.fast_norm`: RMSNorm in three passes instead of six (~6% of a step);
    - :mod:`~tunesmith.train.cpu_attention`: eager attention without K/V copies or fp32 casts.

    Each has a reference path (the module it replaces) and an equality test. On CUDA the
    library kernels are fused already, so nothing changes there.
    """
    if device.type != "cpu":
        return {}
    from tunesmith.train import cpu_attention, fast_dropout, fast_norm

    return {
        "dropout": fast_dropout.install(model),
        "rmsnorm": fast_norm.install(model),
        "attention": cpu_attention.install(model),
    }


def pack_cpu_passes(model, device: torch.device, kv_prefix: bool = False) -> bool:
    """Run each CPU forward pass as one packed, padding-free row (``data.packing``).

    Only where the grouped CPU attention is installed (it attends per example inside a packed
    row, :mod:`~tunesmith.train.packed_attention`; eager would pay ``T^2`` per head) and the
    method keeps examples apart in a row (no prompt or key/value prefix: ``check_packable``).
    """
    from tunesmith.data.packing import packable
    from tunesmith.train import cpu_attention

    if device.type != "cpu" or not packable(model, kv_prefix=kv_prefix):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "_attn_implementation", None) == cpu_attention.NAME


def pass_settings(
    model, device: torch.device, *, kv_prefix: bool = False, packed_rows: bool = False
) -> dict:
    """How :class:`~tunesmith.train.loop.LoopSettings` cuts micro-batches into forward passes.

    ``packed_rows``: the examples are already packed rows (``--packing``), which are never
    packed again; ``kv_prefix``: the method puts a key/value prefix in front of each row.
    """
    return {
        "split_overhead_tokens": split_overhead_tokens(device),
        "split_max_tokens": split_max_tokens(device),
        "pack_passes": not packed_rows and pack_cpu_passes(model, device, kv_prefix),
    }


def adapter_autocast(method: MethodSpec | str, precision: str) -> bool:
    """Run LoRA adapters in the compute dtype (fp32 master weights, bf16 math) instead of fp32.

    ``method`` is a :class:`~tunesmith.methods.base.MethodSpec` or a registered name; only
    methods whose spec says ``autocast_adapters`` (the plain ``B(A(dropout(x)))·scale``
    forward; DoRA's weight-norm path and the other tuners keep peft's own casting) qualify.

    peft casts every adapter input to the adapter's fp32 dtype, so each targeted projection
    pays a cast of its input, an fp32 dropout and fp32 matmuls, and keeps the fp32 copy for the
    backward. Under autocast with peft's input casting off, the same adapter computes in bf16
    from the bf16 activations (the fp32 weights are cast, which is tiny at rank r): half the
    adapter activation memory; speed was neutral at 2 threads on the demo (a 1-thread A/B on a
    shared machine had suggested ~12%, which did not hold). This is the usual mixed
    precision recipe (TRL's bf16 mode does the same for the whole model).
    """
    if isinstance(method, str):
        from tunesmith.methods import get_method

        method = get_method(method)
    return method.autocast_adapters and precision in ("bf16", "fp16")


def compute_context(model, device: torch.device, autocast_dtype, keep_input_dtype: bool):
    """The context a training forward runs in: autocast, and peft's input casting off if asked."""
    stack = contextlib.ExitStack()
    if autocast_dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=autocast_dtype))
    if keep_input_dtype:
        from peft.helpers import disable_input_dtype_casting

        stack.enter_context(disable_input_dtype_casting(model))
    return stack
