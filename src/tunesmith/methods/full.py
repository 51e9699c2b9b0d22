"""Full fine-tuning: every parameter trains (the reference PEFT methods are measured against).

Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018
(arXiv:1801.06146): update all weights on the target task. Not a PEFT adapter: the model is saved
with its own ``save_pretrained``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.methods.freeze import BASE_WEIGHT_TRAINING
from tunesmith.shape import model_shape


def apply_full(model: nn.Module, args: MethodArgs) -> nn.Module:
    return model.requires_grad_(True)


def count_full(model_config: Any, args: MethodArgs) -> int:
    return model_shape(model_config).total_params


def count_full_tensors(model_config: Any, args: MethodArgs) -> int:
    return model_shape(model_config).tensors


register(
    MethodSpec(
        name="full",
        summary="Every weight trains; the baseline with the most memory and the best reach.",
        paper="Howard & Ruder, ULMFiT, ACL 2018 (arXiv:1801.06146)",
        view=UnifiedView(
            form="W ← W + ΔW", position="all", insertion="in place", composition="replace"
        ),
        param_formula="V·d·(1 + untied) + L·block + d",
        apply=apply_full,
        count_trainable=count_full,
        count_tensors=count_full_tensors,
        trains_lm_head=True,
        **BASE_WEIGHT_TRAINING,
    )
)
