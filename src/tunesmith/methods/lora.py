"""LoRA through peft.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022 (arXiv:2106.09685),
Eq. (3): h = W0·x + (alpha/r)·B·A·x, with B zero-initialized so the adapted model starts equal
to the base. Unified view: a parallel, scaled-add low-rank function beside each target linear.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register


def lora_config(args: MethodArgs, **overrides: Any):
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
    from peft import get_peft_model

    return get_peft_model(model, lora_config(args, **overrides))


def linear_shapes(model_config: Any, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(in_features, out_features) of every targeted linear, from the config alone."""
    h = model_config.hidden_size
    heads = model_config.num_attention_heads
    kv = getattr(model_config, "num_key_value_heads", None) or heads
    hd = getattr(model_config, "head_dim", None) or h // heads
    inter = model_config.intermediate_size
    per_layer = {
        "q_proj": (h, heads * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (heads * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    shapes = []
    for name in names:
        if name not in per_layer:
            raise ValueError(f"no shape rule for module {name!r}")
        shapes.extend([per_layer[name]] * model_config.num_hidden_layers)
    return shapes


def count_lora(model_config: Any, args: MethodArgs) -> int:
    # A is r x d_in, B is d_out x r, per targeted linear.
    return sum(args.rank * (i + o) for i, o in linear_shapes(model_config, args.target))


register(
    MethodSpec(
        name="lora",
        summary="Low-rank update B·A beside each target linear; mergeable, zero inference cost.",
        paper="Hu et al., LoRA, ICLR 2022 (arXiv:2106.09685), Eq. 3",
        view=UnifiedView(
            form="(alpha/r)·B·A·x", position="attention (target modules)", insertion="parallel",
            composition="scaled add",
        ),
        param_formula="sum over targets of r·(d_in + d_out) per layer",
        apply=apply_lora,
        count_trainable=count_lora,
        mergeable=True,
    )
)
