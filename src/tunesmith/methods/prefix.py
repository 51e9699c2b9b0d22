"""Prefix tuning through peft, with the reparameterization MLP during training.

Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021
(arXiv:2101.00190), §4.2-4.3: every layer attends to l learned key/value vectors before the real
tokens, and training optimizes P = MLP(P') (Eq. 5: P[i,:] = MLP(P'[i,:])) for stability. peft's
``prefix_projection=True`` is exactly that; its saved adapter holds the computed prefix, so
inference needs no MLP. In the unified view (He et al. 2022, Eq. 7) this is a gated parallel
addition at attention: h <- (1-λ(x))·h + λ(x)·softmax(x·W_q·P_k^T)·P_v.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.base import (
    VIRTUAL_TOKEN_PREFERENCE_REFUSAL,
    MethodArgs,
    MethodSpec,
    UnifiedView,
    register,
)
from tunesmith.shape import model_shape


def _encoder_hidden(model_config: Any, args: MethodArgs) -> int:
    # peft's default MLP width is the prefix token width (kv_heads · head_dim).
    return int(args.extra.get("prefix_hidden", model_shape(model_config).kv_dim))


def apply_prefix(model, args: MethodArgs):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=args.num_virtual_tokens,
        prefix_projection=True,
        encoder_hidden_size=_encoder_hidden(model.config, args),
    )
    return get_peft_model(model, config)


def count_prefix(model_config: Any, args: MethodArgs) -> int:
    g = model_shape(model_config)
    t, e, out = g.kv_dim, _encoder_hidden(model_config, args), g.layers * 2 * g.kv_dim
    # P' (l x t), then Linear(t -> e) + tanh + Linear(e -> L·2·t), both with bias.
    return args.num_virtual_tokens * t + (t * e + e) + (e * out + out)


def count_prefix_tensors(model_config: Any, args: MethodArgs) -> int:
    return 5  # P' and the MLP's two linears (weight and bias each)


register(
    MethodSpec(
        name="prefix",
        summary="Learned key/value prefixes in every layer, trained through an MLP.",
        paper="Li & Liang, Prefix-Tuning, ACL 2021 (arXiv:2101.00190), §4.2-4.3, Eq. 5",
        view=UnifiedView(
            form="softmax(x·W_q·P_k^T)·P_v",
            position="keys-values",
            insertion="parallel",
            composition="gate",
        ),
        param_formula="l·t + (t·e + e) + (e·2·L·t + 2·L·t), t = kv_dim, e = MLP width",
        apply=apply_prefix,
        count_trainable=count_prefix,
        count_tensors=count_prefix_tensors,
        gradient_checkpointing=False,
        kv_prefix=True,
        preference_refusal=VIRTUAL_TOKEN_PREFERENCE_REFUSAL,
        # It diverged at prompt tuning's 1e-2 on the demo (benchmarks/RESULTS.md); 3e-3 trains.
        default_lr=3e-3,
    )
)
