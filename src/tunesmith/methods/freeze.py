"""Partial fine-tuning: train the top k transformer blocks and the final norm, freeze the rest.

The classic baseline of the PEFT literature (e.g. Houlsby et al. 2019, §3.1 "fine-tuning the
top layers"; Lee et al., "What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning",
2019, arXiv:1911.03090). Not a PEFT adapter: the result is the model itself, saved with its own
``save_pretrained``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.shape import decoder_parts, model_shape


def apply_freeze(model: nn.Module, args: MethodArgs) -> nn.Module:
    blocks, norm = decoder_parts(model)
    if not 1 <= args.freeze_top_k <= len(blocks):
        raise ConfigError(
            "freeze_top_k", args.freeze_top_k, f"1..{len(blocks)} (the model's blocks)"
        )
    model.requires_grad_(False)
    for block in blocks[len(blocks) - args.freeze_top_k :]:
        block.requires_grad_(True)
    if norm is not None:
        norm.requires_grad_(True)  # the top blocks' output passes through it
    return model


def count_freeze(model_config: Any, args: MethodArgs) -> int:
    s = model_shape(model_config)
    return min(args.freeze_top_k, s.layers) * s.block_params + s.final_norm_params


def count_freeze_tensors(model_config: Any, args: MethodArgs) -> int:
    s = model_shape(model_config)
    return min(args.freeze_top_k, s.layers) * s.block_tensors + s.final_norm_tensors


# The usual full fine-tuning learning rate; when the run does not fit, LoRA changes what is
# learned (weighted 2x in the recommender's ranking) and QLoRA adds its ~1.4x on top.
BASE_WEIGHT_TRAINING = dict(
    peft_format=False,
    trains_base_weights=True,
    default_lr=5e-5,
    cheaper_alternatives=(("lora", 2.0), ("qlora", 2.8)),
)


register(
    MethodSpec(
        name="freeze",
        summary="Train only the top k blocks (+ final norm); the rest stays frozen.",
        paper="Houlsby et al. 2019 (arXiv:1902.00751) §3.1 baseline; Lee et al. 2019 (arXiv:1911.03090)",
        view=UnifiedView(
            form="W_top ← W_top + ΔW",
            position="top k blocks",
            insertion="in place",
            composition="replace",
        ),
        param_formula="k·block + d",
        apply=apply_freeze,
        count_trainable=count_freeze,
        count_tensors=count_freeze_tensors,
        **BASE_WEIGHT_TRAINING,
    )
)
