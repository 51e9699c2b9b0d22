"""QLoRA: LoRA on a base frozen in 4-bit NF4 with double quantization (bitsandbytes).

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023
(arXiv:2305.14314), Eq. (5): Y = X·doubleDequant(c1, c2, W_NF4) + X·L1·L2 — the base weight is
stored as 4-bit NormalFloat with quantized quantization constants and dequantized to the compute
dtype (bf16 where the hardware has it) for each matmul; gradients flow only into the LoRA factors.

The loader reads ``MethodSpec.quantized_base`` and loads the model with
:func:`quantization_config`; :func:`apply_qlora` then runs peft's
``prepare_model_for_kbit_training`` and adds LoRA. bitsandbytes >= 0.45 has a CPU path, so this
runs (slowly) without a GPU too. To merge, fold the adapter into :func:`dequantize` of the
4-bit base: the weights the adapter was trained against, not the original full-precision ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.methods.lora import (
    LORA_FAMILY,
    LORA_FORMULA,
    apply_lora,
    count_lora,
    count_lora_tensors,
)


def compute_dtype() -> torch.dtype:
    """bf16 where the hardware has it natively (as in the paper), else fp32.

    On a CPU with native bf16 this matters: fp32 compute dequantized every 4-bit weight to
    fp32 and cast it again under autocast, ~10x slower than LoRA per step on the demo.
    """
    from tunesmith.precision import default_device, resolve_precision

    return (
        torch.bfloat16 if resolve_precision("auto", default_device()) == "bf16" else torch.float32
    )


def quantization_config():
    """``BitsAndBytesConfig`` for QLoRA: 4-bit NF4, double quantization, bf16/fp32 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def apply_qlora(model: nn.Module, args: MethodArgs):
    """Prepare a 4-bit model for training and add LoRA.

    ``args.extra["gradient_checkpointing"]`` is passed to ``prepare_model_for_kbit_training``;
    the QLoRA recipe always checkpoints, tunesmith only when the memory plan needs it (the
    trainer sets it from ``plan.json``; default True for direct callers, as in the recipe).

    Raises:
        ConfigError: the model was not loaded in 4-bit (see :func:`quantization_config`).
    """
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False):
        raise ConfigError(
            "method", "qlora", "a base loaded in 4-bit (load it with qlora.quantization_config())"
        )
    use_gc = bool(args.extra.get("gradient_checkpointing", True))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=use_gc)
    return apply_lora(model, args)


def dequantize(model: nn.Module) -> nn.Module:
    """Replace every 4-bit linear of ``model`` (in place) by an fp32 ``nn.Linear``.

    Unlike ``PreTrainedModel.dequantize`` (which goes through bf16), the weights are dequantized
    straight to fp32, so an adapter merged into the result reproduces the unmerged QLoRA model
    computed in fp32. The quantization markers are cleared so the model saves and merges as a
    plain one.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = bnbf.dequantize_4bit(child.weight.data, child.weight.quant_state)
            linear = nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None,
                device=weight.device, dtype=torch.float32,
            )  # fmt: skip
            linear.weight.data = weight.to(torch.float32)
            if child.bias is not None:
                linear.bias.data = child.bias.data.to(torch.float32)
            setattr(module, name, linear)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers' own clean-up of the quantization markers
        quantizer.remove_quantization_config(model)
    if getattr(model, "is_loaded_in_4bit", False):
        model.is_loaded_in_4bit = False
    return model.to(torch.float32)


def count_qlora(model_config: Any, args: MethodArgs) -> int:
    return count_lora(model_config, args)


register(
    MethodSpec(
        name="qlora",
        summary="LoRA on a 4-bit NF4 base (double quantization); merge into the dequantized base.",
        paper="Dettmers et al., QLoRA, NeurIPS 2023 (arXiv:2305.14314), Eq. 5",
        view=UnifiedView(
            form="(alpha/r)·B·A·x beside NF4(W0)·x",
            position="attention (target modules)",
            insertion="parallel",
            composition="scaled add",
        ),
        param_formula=LORA_FORMULA,
        apply=apply_qlora,
        count_trainable=count_qlora,
        count_tensors=count_lora_tensors,
        mergeable=True,
        quantized_base=True,
        autocast_adapters=True,
        traced_as="lora",
        # The family's cheapest member. Its own rate: on the 4-bit base the default recipe
        # (every linear layer) diverged at LoRA's 2e-3 within 20 demo steps and trained at 5e-4
        # (benchmarks/RESULTS.md, "The default LoRA recipe").
        **dict(LORA_FAMILY, cheaper_alternatives=(), default_lr=5e-4),
    )
)
