"""Traced estimate: one real training step at full size, on fake tensors, counting live bytes.

The architecture is instantiated from its config under ``torch._subclasses.FakeTensorMode``
(tensors with shapes, dtypes and storages but no data), the PEFT method is applied with peft
itself, and one forward + backward + optimizer step runs under :class:`LiveBytes`. Whatever
autograd saves, whatever the attention kernel allocates, whatever AdamW creates lazily is
therefore counted exactly as the eager code path allocates it, for any transformers
architecture and without a GPU. What it cannot see: 4-bit weights (bitsandbytes kernels do not
run on fake tensors; QLoRA is traced as LoRA in the compute dtype and its weights come from
the analytic model), CUDA context and allocator fragmentation, and fused kernels that differ
between CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.errors import ConfigError
from tunesmith.methods.base import MethodArgs
from tunesmith.plan.livebytes import LiveBytes, storage_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class TraceResult:
    """Bytes measured over one training step.

    Attributes:
        static_bytes: parameters and buffers before the step.
        forward_peak_bytes: live bytes above static at the forward's peak.
        activation_bytes: live bytes above static when the forward has returned the loss
            (saved activations + logits kept for the backward).
        peak_bytes: the steady-state step's peak above static, optimizer state included.
        gradient_bytes: gradients alive after the backward.
        optimizer_bytes: optimizer state created by the first step.
    """

    static_bytes: int
    forward_peak_bytes: int
    activation_bytes: int
    peak_bytes: int
    gradient_bytes: int
    optimizer_bytes: int

    @property
    def total_peak_bytes(self) -> int:
        return self.static_bytes + self.peak_bytes


def _apply_method(model, method: str, args: MethodArgs):
    """Make ``method``'s parameters trainable through its registered builder (or, for a
    method that cannot run on fake tensors, the builder of its ``traced_as`` stand-in)."""
    from tunesmith.methods.base import get_method

    spec = get_method(method)
    return get_method(spec.traced_as or method).apply(model, args)


def build_model(cfg: Any, method: str, args: MethodArgs, *, precision: str, attn: str):
    """The causal LM for ``cfg`` with ``method`` applied, in the current (fake or real) mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[precision], attn_implementation=attn)
    model.config.use_cache = False
    return _apply_method(model, method, args).train()


def _to_fake(model, fake_mode) -> None:
    """Replace meta parameters and buffers by fake CPU tensors (tied weights stay tied)."""
    import torch.nn as nn

    convert = fake_mode.fake_tensor_converter.from_meta_and_device
    cpu = torch.device("cpu")
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                if t is None:
                    continue
                if id(t) not in memo:
                    fake = convert(fake_mode, t, cpu)
                    if isinstance(t, nn.Parameter):
                        fake = nn.Parameter(fake, requires_grad=t.requires_grad)
                    memo[id(t)] = fake
                table[name] = memo[id(t)]


def run_step(
    model,
    *,
    batch_size: int,
    seq_len: int,
    gradient_checkpointing: bool,
    optimizer: str = "adamw",
    vocab: int,
    foreach: bool = False,
    tracker: LiveBytes | None = None,
) -> TraceResult:
    """Run forward + backward + optimizer step on ``model`` and measure live bytes.

    ``model`` may hold real or fake tensors; with a ``tracker`` already entered by the caller
    its counters are used, else a fresh one is entered here.
    """
    model.train()  # transformers only checkpoints in training mode
    if gradient_checkpointing:
        # Non-reentrant checkpointing (the default of transformers' newer API).
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    static = storage_bytes([*model.parameters(), *model.buffers()])
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError("optimizer", optimizer, "adamw or sgd for a traced step")
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD
    # foreach=False (torch's default on CPU): the per-tensor loop; CUDA's default foreach path
    # adds a state-sized temporary, which the analytic model accounts for separately.
    opt = opt_cls(params, lr=1e-4, foreach=foreach)
    ids = torch.randint(0, vocab, (batch_size, seq_len), device=params[0].device)
    own = tracker is None
    tracker = tracker or LiveBytes()
    if own:
        tracker.__enter__()
    try:
        tracker.exclude([*model.parameters(), *model.buffers()])
        base = tracker.live
        # Step 1 creates the optimizer state lazily; step 2 is the steady state that every
        # later step repeats (state resident during forward and backward), so the peak is
        # taken over both.
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        del loss
        grads = storage_bytes([p.grad for p in params if p.grad is not None])
        before_step = tracker.live
        opt.step()
        opt_bytes = tracker.live - before_step
        opt.zero_grad(set_to_none=True)
        before = tracker.live
        tracker.reset_peak()
        loss = model(input_ids=ids, labels=ids).loss
        activation = tracker.live - before
        forward_peak = tracker.peak - before
        loss.backward()
        del loss
        opt.step()
        opt.zero_grad(set_to_none=True)
        peak = tracker.peak - base
    finally:
        if own:
            tracker.__exit__(None, None, None)
    return TraceResult(static, forward_peak, activation, peak, grads, opt_bytes)


def traced_estimate(
    cfg: Any,
    method: str = "lora",
    *,
    batch_size: int,
    seq_len: int,
    precision: str = "bf16",
    gradient_checkpointing: bool = False,
    attn: str = "sdpa",
    optimizer: str = "adamw",
    args: MethodArgs | None = None,
) -> TraceResult:
    """Trace one training step of ``cfg`` at full size on fake tensors.

    Args:
        cfg: a transformers config (any causal-LM architecture).
        method: a ``--method`` name; a method with ``traced_as`` (QLoRA) is traced as that one.
        batch_size, seq_len: the micro-batch shape.
        precision: bf16, fp16 or fp32 (the dtype the base weights are loaded in).
        gradient_checkpointing: recompute each block in the backward (non-reentrant).
        attn: ``sdpa`` or ``eager`` (which stores the b x heads x s x s score matrix).
        optimizer: ``adamw`` (two fp32 states per trainable fp32 parameter) or ``sgd``.
        args: method arguments (rank, targets...).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = args or MethodArgs()
    if precision not in DTYPES:
        raise ConfigError("precision", precision, ", ".join(DTYPES))
    with torch.device("meta"):
        # peft's adapter injection moves modules with .to(), which cannot swap fake
        # parameters; so build on meta (plain tensors) and fake-ify afterwards.
        model = build_model(cfg, method, args, precision=precision, attn=attn)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    _to_fake(model, fake_mode)
    with fake_mode:
        return run_step(
            model,
            batch_size=batch_size,
            seq_len=seq_len,
            gradient_checkpointing=gradient_checkpointing,
            optimizer=optimizer,
            vocab=cfg.vocab_size,
        )
