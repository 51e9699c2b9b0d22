"""Prompt tuning through peft.

Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning", EMNLP 2021
(arXiv:2104.08691), §2: l learned embeddings P_e (l x d) are prepended to the input embeddings,
[P_e; X_e], and only P_e is trained. In the unified view it acts at the embeddings only.
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


def apply_prompt(model, args: MethodArgs):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.num_virtual_tokens
    )
    return get_peft_model(model, config)


def count_prompt(model_config: Any, args: MethodArgs) -> int:
    return args.num_virtual_tokens * model_shape(model_config).hidden


def count_prompt_tensors(model_config: Any, args: MethodArgs) -> int:
    return 1  # the soft-prompt embedding table


register(
    MethodSpec(
        name="prompt",
        summary="Learned soft-prompt embeddings prepended to the input.",
        paper="Lester et al., Prompt Tuning, EMNLP 2021 (arXiv:2104.08691), §2",
        view=UnifiedView(
            form="[P_e; X_e]", position="embeddings", insertion="serial", composition="concat"
        ),
        param_formula="l·d",
        apply=apply_prompt,
        count_trainable=count_prompt,
        count_tensors=count_prompt_tensors,
        kv_prefix=True,
        preference_refusal=VIRTUAL_TOKEN_PREFERENCE_REFUSAL,
        default_lr=1e-2,  # as in peft's prompt-learning examples
    )
)
