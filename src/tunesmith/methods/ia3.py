"""(IA)^3 through peft.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", NeurIPS 2022 (arXiv:2205.05638), §3.3, Eq. in Fig. 1: learned vectors rescale the
keys and values, softmax(Q·(l_k ⊙ K)^T)·(l_v ⊙ V), and the FFN's inner activation,
(l_ff ⊙ γ(W_1·x))·W_2. The vectors start at 1, so the adapted model starts equal to the base, and
being elementwise they fold into the weights (mergeable). Positions are fixed by the method:
k_proj and v_proj outputs, down_proj input (peft's Llama defaults).
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.methods.targets import position_modules
from tunesmith.shape import model_shape


def apply_ia3(model, args: MethodArgs):
    from peft import IA3Config, TaskType, get_peft_model

    config = IA3Config(
        task_type=TaskType.CAUSAL_LM,
        target_modules=list(position_modules("ia3", model.config)),
        feedforward_modules=list(position_modules("ia3-ff", model.config)),
    )
    return get_peft_model(model, config)


def count_ia3(model_config: Any, args: MethodArgs) -> int:
    shape = model_shape(model_config)
    feedforward = position_modules("ia3-ff", model_config)
    return sum(
        i if name in feedforward else o  # FFN: scales the input
        for name in position_modules("ia3", model_config)
        for i, o in shape.target_shapes((name,))
    )


def count_ia3_tensors(model_config: Any, args: MethodArgs) -> int:
    """One vector per scaled module per block."""
    return len(model_shape(model_config).target_shapes(position_modules("ia3", model_config)))


register(
    MethodSpec(
        name="ia3",
        summary="Learned vectors rescaling keys, values and the FFN activation; mergeable.",
        paper="Liu et al., (IA)^3, NeurIPS 2022 (arXiv:2205.05638), §3.3",
        view=UnifiedView(
            form="l ⊙ h", position="keys-values + ffn", insertion="serial", composition="rescale"
        ),
        param_formula="L·(2·kv_dim + d_ff)",
        apply=apply_ia3,
        count_trainable=count_ia3,
        count_tensors=count_ia3_tensors,
        mergeable=True,
        default_lr=1e-2,  # as in peft's (IA)^3 examples
    )
)
