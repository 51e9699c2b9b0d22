"""rsLoRA through peft (``LoraConfig(use_rslora=True)``).

Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023
(arXiv:2312.03732), Theorem 3.2: scaling the update by alpha/sqrt(r) instead of alpha/r keeps
activations and gradients rank-stable, h = W0·x + (alpha/sqrt(r))·B·A·x. Same parameters as
LoRA; B = 0 at init.
"""

from __future__ import annotations

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.methods.lora import (
    LORA_FAMILY,
    LORA_FORMULA,
    apply_lora,
    count_lora,
    count_lora_tensors,
)


def apply_rslora(model, args: MethodArgs):
    return apply_lora(model, args, use_rslora=True)


register(
    MethodSpec(
        name="rslora",
        summary="LoRA with the rank-stabilized scale alpha/sqrt(r); mergeable.",
        paper="Kalajdzievski, rsLoRA, 2023 (arXiv:2312.03732), Thm. 3.2",
        view=UnifiedView(
            form="(alpha/sqrt(r))·B·A·x",
            position="attention (target modules)",
            insertion="parallel",
            composition="scaled add",
        ),
        param_formula=LORA_FORMULA,
        apply=apply_rslora,
        count_trainable=count_lora,
        count_tensors=count_lora_tensors,
        mergeable=True,
        autocast_adapters=True,
        **LORA_FAMILY,
    )
)
