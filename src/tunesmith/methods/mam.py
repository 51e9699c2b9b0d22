"""MAM (Mix-and-Match) adapter: prefix tuning at attention + scaled parallel adapter at the FFN.

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022
(arXiv:2110.04366), §4.4: prefix tuning with l prefix vectors per layer (Eq. 5, He et al. use
l = 30) combined with a parallel adapter at the FFN, h <- FFN(x) + s·f(x), s = 4 (Eq. 10).
peft cannot stack prefix tuning with another method in one model, so both parts live in one
registered tuner (``PeftType.MAM``; see :mod:`tunesmith.methods.tuners.mam.model` for why and
how). The prefix is randomly initialized, so MAM does not start exactly at the base model.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.adapters import adapter_params
from tunesmith.methods.base import (
    VIRTUAL_TOKEN_PREFERENCE_REFUSAL,
    MethodArgs,
    MethodSpec,
    UnifiedView,
    register,
)
from tunesmith.methods.targets import position_modules
from tunesmith.methods.tuners.mam import MamConfig  # registers PeftType.MAM
from tunesmith.shape import model_shape


def apply_mam(model, args: MethodArgs):
    from peft import TaskType, get_peft_model

    config = MamConfig(
        task_type=TaskType.CAUSAL_LM,
        target_modules=list(position_modules("ffn", model.config)),
        bottleneck_size=args.bottleneck,
        scale=args.scale,
        num_virtual_tokens=args.num_virtual_tokens,
        variant="mam",
    )
    return get_peft_model(model, config)


def count_mam(model_config: Any, args: MethodArgs) -> int:
    g = model_shape(model_config)
    prefix = g.layers * 2 * args.num_virtual_tokens * g.kv_dim  # keys and values per layer
    return prefix + g.layers * adapter_params(model_config, args.bottleneck)


def count_mam_tensors(model_config: Any, args: MethodArgs) -> int:
    # One adapter (down and up, weight and bias each) per block, and the prefix table.
    return 4 * model_shape(model_config).layers + 1


register(
    MethodSpec(
        name="mam",
        summary="Prefix keys/values at attention plus a scaled parallel adapter at the FFN.",
        paper="He et al., Unified View of PETL, ICLR 2022 (arXiv:2110.04366), §4.4, Eq. 5 + 10",
        view=UnifiedView(
            form="softmax(x·W_q·P_k^T)·P_v ; W_up·ReLU(W_down·x)",
            position="keys-values + ffn",
            insertion="parallel",
            composition="gate (prefix) + scaled add (ffn)",
        ),
        param_formula="L·2·l·kv_dim + L·(2·d·m + m + d)",
        apply=apply_mam,
        count_trainable=count_mam,
        count_tensors=count_mam_tensors,
        gradient_checkpointing=False,
        kv_prefix=True,
        preference_refusal=VIRTUAL_TOKEN_PREFERENCE_REFUSAL,
        default_lr=1e-3,  # He et al. 2022 train their adapters at 1e-4..1e-3
    )
)
