"""LoRA through peft.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022 (arXiv:2106.09685),
Eq. (3): h = W0·x + (alpha/r)·B·A·x, with B zero-initialized so the adapted model starts equal
to the base. Unified view: a parallel, scaled-add low-rank function beside each target linear.

The LoRA variants (:mod:`.dora`, :mod:`.rslora`, :mod:`.qlora`) build on :func:`lora_config`
with peft's own switches.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.shape import model_shape


def lora_config(args: MethodArgs, **overrides: Any):
    """peft ``LoraConfig`` for ``args`` (rank, alpha, dropout, targets); ``overrides`` win."""
    from peft import LoraConfig, TaskType

    kw = dict(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(args.target),
        task_type=TaskType.CAUSAL_LM,
        bias="none",
    )
    kw.update(overrides)
    return LoraConfig(**kw)


def apply_lora(model, args: MethodArgs, **overrides: Any):
    """Wrap ``model`` in a peft LoRA model; only the A/B matrices (and variant extras) train."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(args, **overrides))


def linear_shapes(model_config: Any, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(in_features, out_features) of every targeted linear, from the config alone."""
    return model_shape(model_config).target_shapes(names)


def count_lora(model_config: Any, args: MethodArgs) -> int:
    """A is r x d_in, B is d_out x r, per targeted linear per block."""
    return sum(args.rank * (i + o) for i, o in linear_shapes(model_config, args.target))


def count_lora_tensors(model_config: Any, args: MethodArgs) -> int:
    """lora_A and lora_B per targeted linear per block."""
    return 2 * len(linear_shapes(model_config, args.target))


# The LoRA family's shared capabilities (see MethodSpec). Its learning rate: Hu et al. use
# 2e-4..5e-4 on large models; on the small SmolLM2 demo with few steps 2e-3 converges fastest.
# When it does not fit, QLoRA dequantizes every weight on every use: ~1.4x LoRA's step time
# (Dettmers et al. 2023 and peft's bitsandbytes benchmarks).
LORA_FAMILY = dict(
    targets_modules=True,
    lora_branches=True,
    default_lr=2e-3,
    cheaper_alternatives=(("qlora", 1.4),),
)


LORA_FORMULA = "L·Σ_targets r·(d_in + d_out)"

register(
    MethodSpec(
        name="lora",
        summary="Low-rank update B·A beside each target linear; mergeable, zero inference cost.",
        paper="Hu et al., LoRA, ICLR 2022 (arXiv:2106.09685), Eq. 3",
        view=UnifiedView(
            form="(alpha/r)·B·A·x",
            position="attention (target modules)",
            insertion="parallel",
            composition="scaled add",
        ),
        param_formula=LORA_FORMULA,
        apply=apply_lora,
        count_trainable=count_lora,
        count_tensors=count_lora_tensors,
        mergeable=True,
        autocast_adapters=True,
        **LORA_FAMILY,
    )
)
