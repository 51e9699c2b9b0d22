"""The analytic memory model: every byte of one training step, itemized, with its source.

Notation: T = b·s tokens in a micro-batch, h hidden, I the MLP's inner width, L layers,
a / k query and key-value heads of width d, V vocabulary, p the compute dtype's bytes
(2 for bf16/fp16, 4 for fp32). The model follows the Hugging Face Llama-family forward
(RMSNorm, rotary attention, gated MLP), which covers llama, mistral, qwen2 and gemma2; the
traced estimate (:mod:`tunesmith.plan.trace`) covers everything else and checks this one.

The step's peak is taken at the moment it happens rather than as a sum of worst cases: with
optimizer state resident (it persists from the first step on), memory peaks either at the
start of the backward (all saved activations + the loss's fp32 buffers alive) or at the
optimizer step (all gradients alive, activations freed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tunesmith.errors import ConfigError
from tunesmith.methods.base import MethodSpec, get_method
from tunesmith.shape import ModelShape

MIB = 1024**2
GIB = 1024**3

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw", "paged_adamw8bit", "sgd")

# NF4 with double quantization (Dettmers et al. 2023, QLoRA, arXiv:2305.14314, Sec. 3
# "Double Quantization"): 4 bits per weight + one absmax per 64-weight block, quantized to
# 8 bits (8/64 = 0.125 bits), + one fp32 second-level absmax per 256 first-level blocks
# (32/(64·256) = 0.00195 bits) -> 4.127 bits/param (bitsandbytes functional.quantize_4bit
# with compress_statistics=True, blocksize=64).
NF4_BITS_PER_PARAM = 4 + 8 / 64 + 32 / (64 * 256)

# CUDA context: kernels, cuBLAS/cuDNN handles and workspaces; not visible to
# torch.cuda.memory_allocated but it occupies the device. Measured 300-500 MiB on recent
# NVIDIA GPUs (PyTorch docs, "CUDA semantics / memory management"; nvidia-smi on an idle
# process after torch.cuda.init()). We take the upper end.
CUDA_CONTEXT = 500 * MIB
# Caching-allocator fragmentation: reserved exceeds allocated by a few percent in steady
# training (torch.cuda.memory_stats 'reserved_bytes' vs 'allocated_bytes'; PyTorch blog
# "Understanding GPU Memory", 2023). Headroom as a fraction of the allocated peak.
FRAGMENTATION = 0.05
# A CPU run: the interpreter, torch's libraries and tokenizers resident in RAM.
CPU_RUNTIME = 1 * GIB


@dataclass(frozen=True)
class StepSettings:
    """The run settings that decide memory (builders turn configs into this)."""

    method: str
    batch_size: int
    seq_len: int
    precision: str = "bf16"
    gradient_checkpointing: bool = False
    attn: str = "sdpa"  # sdpa | flash | eager
    optimizer: str = "adamw"
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    rank: int = 8
    dropout: float = 0.05
    logits_fraction: float = 1.0  # share of positions whose logits are computed
    loss_chunk: int | None = None  # chunked cross-entropy over this many positions at a time
    foreach: bool = True  # torch's multi-tensor optimizer path (default on CUDA)
    fused_adamw: bool = False  # one kernel per tensor, no temporaries (adamw.py)
    kbit_upcast: bool = True  # peft.prepare_model_for_kbit_training's fp32 upcast
    master_fp32: bool = True  # full/freeze: fp32 weights + autocast (tunesmith train's policy)
    device: str = "cuda"  # cuda | cpu
    eval_batch_size: int | None = None
    # Preference objectives: rows per example in the trained forward (a pair: chosen and
    # rejected) and how the reference is scored: "none", "adapter-off" (a no_grad forward of
    # the same rows before the policy's), "frozen-copy" (a second set of weights) or "cached"
    # (scored once before training: nothing per step).
    sequences_per_example: int = 1
    reference: str = "none"


@dataclass(frozen=True)
class Terms:
    """Bytes of each part of the step's peak, plus the raw terms behind them."""

    weights: int
    trainable: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    detail: dict[str, int]

    @property
    def total(self) -> int:
        return (
            self.weights + self.trainable + self.gradients + self.optimizer
            + self.activations + self.logits + self.overhead
        )  # fmt: skip

    @property
    def allocated(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should read (no context/fragmentation)."""
        return self.total - self.overhead + self.detail.get("eval_save_excess", 0)


def _spec(settings: StepSettings) -> MethodSpec:
    """The registered method of ``settings``: its capabilities decide which terms apply."""
    return get_method(settings.method)


def _p(settings: StepSettings) -> int:
    try:
        return DTYPE_BYTES[settings.precision]
    except KeyError:
        raise ConfigError("precision", settings.precision, ", ".join(DTYPE_BYTES)) from None


def fp32_master(settings: StepSettings) -> bool:
    """Base-weight training (full, freeze) with fp32 weights under autocast (mixed precision).

    tunesmith's trainer keeps fp32 master weights for methods that train base weights and
    runs the forward under ``torch.autocast`` (AdamW on bf16 weights loses small updates;
    Micikevicius et al. 2018, "Mixed Precision Training", arXiv:1710.03740).
    """
    return _spec(settings).trains_base_weights and settings.master_fp32 and _p(settings) != 4


def weight_bytes(shape: ModelShape, settings: StepSettings) -> int:
    """Bytes of the base model's weights as loaded for training."""
    p = 4 if fp32_master(settings) else _p(settings)
    if not _spec(settings).quantized_base:
        return shape.total_params * p
    # bitsandbytes quantizes only the block linears (transformers' get_keys_to_not_convert
    # keeps lm_head; embeddings and norms are not nn.Linear). peft's
    # prepare_model_for_kbit_training then casts every remaining fp16/bf16 parameter to fp32
    # (peft/utils/other.py), which for a large vocabulary costs gigabytes.
    rest = shape.embed_params + shape.lm_head_params + shape.other_params
    rest_bytes = rest * (4 if settings.kbit_upcast else p)
    return math.ceil(shape.linear_params * NF4_BITS_PER_PARAM / 8) + rest_bytes


def trainable_dtype_bytes(settings: StepSettings) -> int:
    """Bytes per trainable parameter (and per gradient element)."""
    if _spec(settings).trains_base_weights:
        # trained in the dtype they were loaded in: fp32 masters, or pure 16-bit
        return 4 if fp32_master(settings) else _p(settings)
    # peft's get_peft_model(autocast_adapter_dtype=True) upcasts 16-bit adapter weights to
    # fp32 (peft/tuners/tuners_utils.py, cast_adapter_dtype), as mixed-precision training needs.
    return 4


def optimizer_bytes(n_params: int, n_tensors: int, dtype_bytes: int, optimizer: str) -> int:
    """Optimizer state after the first step.

    Args:
        n_params: trainable parameters. n_tensors: how many tensors they are split into.
        dtype_bytes: bytes per element of the parameters (torch keeps state in their dtype).
        optimizer: one of :data:`OPTIMIZERS`.
    """
    if optimizer == "sgd":
        return 0  # plain SGD without momentum keeps no state
    if optimizer in ("adamw", "paged_adamw"):
        # torch.optim.AdamW._init_group: exp_avg and exp_avg_sq = zeros_like(param), plus a
        # 0-dim fp32 `step` tensor per parameter (Loshchilov & Hutter 2019, arXiv:1711.05101).
        # The paged variant (bitsandbytes) holds the same bytes in CUDA unified memory, which
        # can be evicted to host RAM under pressure instead of raising OOM.
        return 2 * n_params * dtype_bytes + 4 * n_tensors
    if optimizer in ("adamw8bit", "paged_adamw8bit"):
        # bitsandbytes 8-bit blockwise Adam (Dettmers et al. 2022, arXiv:2110.02861): two uint8
        # states + one fp32 absmax per 256-element block each (bitsandbytes/optim/optimizer.py,
        # blocksize=256). Tensors under min_8bit_size=4096 elements stay 32-bit; for LoRA and
        # full fine-tuning almost every tensor is larger, so we count all as 8-bit.
        blocks = math.ceil(n_params / 256)
        return 2 * n_params + 2 * 4 * blocks + 4 * n_tensors
    raise ConfigError("optimizer", optimizer, ", ".join(OPTIMIZERS))


def fp32_residual(settings: StepSettings) -> bool:
    """Whether activations run in fp32 although weights are 16/4-bit: QLoRA after k-bit prep.

    peft's prepare_model_for_kbit_training upcasts the embedding, the norms and lm_head to
    fp32, so the embedding output, every residual sum and every norm output are fp32; a
    bitsandbytes Linear4bit computes in bf16 but casts its output back to its input's dtype
    (bitsandbytes/nn/modules.py, ``.to(inp_dtype)``), so q/k/v, the MLP and the logits are
    fp32 too. Without autocast, a QLoRA step therefore keeps fp32 activations.
    """
    return _spec(settings).quantized_base and settings.kbit_upcast and _p(settings) != 4


def activation_bytes_per_element(settings: StepSettings) -> int:
    """Bytes per activation element: the compute dtype, or 4 under :func:`fp32_residual`."""
    return 4 if fp32_residual(settings) else _p(settings)


def _lora_saved_inputs(shape: ModelShape, settings: StepSettings) -> int:
    """Bytes per token that LoRA branches save for their weight gradients."""
    # Targets reading the same tensor: q/k/v read the attention norm's output, gate/up the
    # MLP norm's output.
    source = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "gate_proj": "mlp",
              "up_proj": "mlp"}  # fmt: skip
    shared: set[str] = set()
    total = 0
    for name in settings.targets:
        d_in = shape.target_shapes((name,))[0][0]  # the branch reads the linear's input
        total += 4 * settings.rank  # lora_A's output, saved for lora_B's gradient
        if settings.dropout > 0:
            # peft applies a separate nn.Dropout per target: its output (fp32 after the cast
            # below) and its mask (bool on CUDA: torch native_dropout) are saved per target.
            # On CPU LoRA computes in bf16 with train/fastpath/dropout.py's bf16 mask: 2 + 2
            # bytes, which these 5 cover.
            total += 4 * d_in + d_in
            continue
        # peft lora.Linear.forward casts x to the fp32 adapter dtype (_cast_input_dtype) and
        # lora_A saves that copy: one copy per target, unless x already is fp32 (QLoRA's fp32
        # residual stream, or an fp32 model), in which case targets reading the same tensor
        # share it.
        key = source.get(name, name)
        if activation_bytes_per_element(settings) == 4 and key in shared:
            continue
        shared.add(key)
        total += 4 * d_in
    return total


def layer_activation_bytes(shape: ModelShape, settings: StepSettings) -> int:
    """Bytes one decoder layer saves for the backward (no checkpointing), per micro-batch.

    The tensors follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", arXiv:2205.05198, Sec. 4.1), re-derived for the Llama block: which
    tensors autograd saves depends on what needs a gradient (a frozen weight's input is not
    saved), so LoRA and full fine-tuning differ.
    """
    p = activation_bytes_per_element(settings)
    h, inter = shape.hidden, shape.intermediate
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    full = _spec(settings).trains_base_weights
    per_token = 0
    # RMSNorm (HF LlamaRMSNorm) upcasts its input to fp32 and saves it: 2 norms per block.
    per_token += 2 * 4 * h
    if full:
        # With trainable weights: the normalized input saved by `weight * x` and the norm's
        # output saved by the following linears for their weight gradients, for both norms.
        per_token += 2 * 2 * p * h
        per_token += p * q_width  # o_proj's input
        per_token += p * inter  # down_proj's input
    # Attention (SDPA / FlashAttention, Dao et al. 2022, arXiv:2205.14135): saves q, k, v and
    # the output, not the s x s scores; GQA keeps k and v at kv_heads width.
    per_token += p * (2 * q_width + 2 * kv_width)
    per_token += 4 * shape.heads  # logsumexp, fp32, one per head and position
    # Gated MLP: silu saves its input (gate), the product saves silu(gate) and up.
    per_token += 3 * p * inter
    if _spec(settings).lora_branches:
        per_token += _lora_saved_inputs(shape, settings)
    if any(per_output := _spec(settings).saved_per_output):  # e.g. DoRA's rescaled outputs
        outputs = sum(d_out for _, d_out in shape.target_shapes(settings.targets))
        per_token += (per_output[0] * p + per_output[1]) * outputs // max(shape.layers, 1)
    tokens = settings.batch_size * settings.seq_len
    total = per_token * tokens
    if settings.attn == "eager":
        # Eager attention materializes the b·a·s² scores; softmax runs in fp32 and is saved,
        # and its cast back to the compute dtype is saved by the matmul with v
        # (transformers eager_attention_forward). Korthikanti et al.'s 5·a·s/h term.
        scores = settings.batch_size * shape.heads * settings.seq_len**2
        total += scores * (4 + (p if p != 4 else 0))
    return total


def logits_bytes(shape: ModelShape, settings: StepSettings) -> tuple[int, int]:
    """(peak, retained) bytes of the logits and the loss at the start of the backward.

    transformers' ForCausalLMLoss upcasts the logits to fp32 (``logits.float()``) before
    cross-entropy; log_softmax keeps its fp32 output for the backward, and the backward of
    nll_loss/log_softmax creates two more fp32 b·s·V tensors. Computing logits only at
    trained positions scales this by ``logits_fraction``; a chunked loss bounds it by the
    chunk (as in Liger-Kernel's fused linear cross-entropy, arXiv:2410.10989).
    """
    positions = settings.batch_size * settings.seq_len * settings.logits_fraction
    if settings.loss_chunk:
        positions = min(positions, settings.loss_chunk)
    p = activation_bytes_per_element(settings)
    retained = 4 * shape.vocab * positions
    forward = retained + shape.vocab * positions * (p + (4 if p != 4 else 0))
    backward = retained + 2 * 4 * shape.vocab * positions
    return math.ceil(max(forward, backward)), math.ceil(retained)


def step_terms(
    shape: ModelShape, settings: StepSettings, n_trainable: int, n_tensors: int
) -> Terms:
    """The itemized peak of one training step (see the module docstring for the timing)."""
    if settings.attn not in ("sdpa", "flash", "eager"):
        raise ConfigError("attn", settings.attn, "sdpa, flash or eager")
    # A pair batch of B examples is a forward over B x sequences_per_example rows.
    settings = replace(
        settings,
        batch_size=settings.batch_size * settings.sequences_per_example,
        sequences_per_example=1,
    )
    p = _p(settings)
    tokens = settings.batch_size * settings.seq_len
    weights = weight_bytes(shape, settings)
    # A frozen copy of the starting weights scores the reference (full fine-tuning).
    reference_weights = weights if settings.reference == "frozen-copy" else 0
    weights += reference_weights
    tb = trainable_dtype_bytes(settings)
    spec = _spec(settings)
    full = spec.trains_base_weights
    trainable = 0 if full else n_trainable * tb  # base weights are trained in place
    grads_all = n_trainable * tb
    opt = optimizer_bytes(n_trainable, n_tensors, tb, settings.optimizer)
    layer = layer_activation_bytes(shape, settings)
    act = activation_bytes_per_element(settings)
    square, per_weight = spec.forward_transient  # beside the saved activations, once
    shapes = shape.target_shapes(settings.targets) if square or per_weight else []
    transient = max((square * i * i + per_weight * i * o for i, o in shapes), default=0)
    if settings.gradient_checkpointing:
        # Non-reentrant checkpointing (torch.utils.checkpoint) saves each block's input; the
        # backward recomputes one block at a time (Chen et al. 2016, arXiv:1604.06174).
        saved = shape.layers * tokens * act * shape.hidden
        recompute = layer + transient
    else:
        saved, recompute = shape.layers * layer, transient
    # The final norm's fp32 input and the embedding output live outside the blocks.
    saved += tokens * (4 + act) * shape.hidden
    # Under autocast every linear's weight is cast to the compute dtype and the cast is saved
    # for the input gradient (and cached per forward for leaf weights): a 16-bit copy of all
    # linears (block linears and lm_head) alive until their backward (torch autocast docs).
    autocast_copies = 0
    if fp32_master(settings):
        head = shape.lm_head_params or shape.embed_params
        autocast_copies = (shape.linear_params + head) * _p(settings)
        saved += autocast_copies
    logits_peak, _ = logits_bytes(shape, settings)
    # Gradient w.r.t. lm_head's weight (full FT) appears once the loss's fp32 buffers are
    # freed, beside the compute-dtype gradient of the logits.
    head_grad = (shape.lm_head_params or shape.embed_params) * tb if spec.trains_lm_head else 0
    logits_grad = (
        settings.batch_size * settings.seq_len * settings.logits_fraction * shape.vocab * act
    )
    after_loss = math.ceil(logits_grad) + head_grad if head_grad else 0
    largest = max(shape.embed_params, shape.lm_head_params) if full else 0
    if settings.optimizer != "adamw" or settings.fused_adamw:
        step_tmp = 0  # SGD keeps nothing; fused AdamW kernels update in place
    elif settings.foreach:
        # torch's foreach AdamW (_multi_tensor_adam) materializes sqrt(exp_avg_sq) for all
        # parameters at once: one state-sized temporary.
        step_tmp = n_trainable * tb
    else:
        # single-tensor AdamW: sqrt(exp_avg_sq) and its sum with eps, one tensor at a time;
        # the largest tensor (the embedding, for full fine-tuning) sets the peak.
        step_tmp = 2 * largest * tb
    at_backward = saved + max(logits_peak, after_loss, recompute)
    at_step = grads_all + step_tmp
    if at_backward >= at_step:
        activations = saved + (recompute if recompute > max(logits_peak, after_loss) else 0)
        gradients = head_grad if after_loss > max(logits_peak, recompute) else 0
        logits = at_backward - activations - gradients
    else:
        activations, logits, gradients = 0, 0, at_step
    # Evaluation (no_grad): weights + optimizer state + one micro-batch's logits in fp32.
    eval_b = settings.eval_batch_size or settings.batch_size
    eval_peak = eval_b * settings.seq_len * shape.vocab * (act + 4)
    # Saving: safetensors copies each tensor to host; the device transient is one contiguous
    # copy of the largest tensor at most (the embedding).
    save_peak = shape.embed_params * p
    # The live reference pass runs under no_grad before the policy's forward: it saves nothing,
    # and its peak is its logits and their fp32 log-softmax over the same rows. It scores
    # through the policy's path (objectives/logps.py), which projects only the scored
    # positions, so ``logits_fraction`` applies as it does to the trained pass.
    reference_peak = 0
    if settings.reference in ("adapter-off", "frozen-copy"):
        positions = settings.batch_size * settings.seq_len * settings.logits_fraction
        reference_peak = math.ceil(positions * shape.vocab * (act + 4))
    dynamic = activations + logits + gradients
    excess = max(eval_peak, save_peak, reference_peak) - dynamic
    allocated = weights + trainable + opt + dynamic + max(excess, 0)
    if settings.device == "cpu":
        runtime = CPU_RUNTIME
    else:
        runtime = CUDA_CONTEXT + math.ceil(FRAGMENTATION * allocated)
    detail = dict(
        layer_activation=layer, saved_activations=saved, recompute=recompute,
        logits_peak=logits_peak, gradients_all=grads_all, optimizer_step_tmp=step_tmp,
        autocast_weight_copies=autocast_copies,
        eval_peak=eval_peak, save_peak=save_peak, eval_save_excess=max(excess, 0),
        reference_peak=reference_peak, reference_weights=reference_weights,
        runtime=runtime,
    )  # fmt: skip
    return Terms(
        weights=weights,
        trainable=trainable,
        gradients=gradients,
        optimizer=opt,
        activations=activations,
        logits=logits,
        overhead=runtime + max(excess, 0),
        detail=detail,
    )
