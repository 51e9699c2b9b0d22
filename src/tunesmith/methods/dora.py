"""DoRA through peft (``LoraConfig(use_dora=True)``).

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024 (arXiv:2402.09353),
Eq. (5): W' = m · (W0 + B·A) / ||W0 + B·A||_c, a learned magnitude vector m (one entry per output
feature, initialized to the column norms of W0) times the LoRA-updated direction. With B = 0 at
init, W' = W0: the adapted model starts equal to the base.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.methods.lora import LORA_FAMILY, apply_lora, count_lora, linear_shapes


def apply_dora(model, args: MethodArgs):
    return apply_lora(model, args, use_dora=True)


def count_dora(model_config: Any, args: MethodArgs) -> int:
    # LoRA's A and B plus the magnitude vector m (d_out) of every target.
    return count_lora(model_config, args) + sum(
        o for _, o in linear_shapes(model_config, args.target)
    )


def count_dora_tensors(model_config: Any, args: MethodArgs) -> int:
    # lora_A, lora_B and the magnitude vector per target per block.
    return 3 * len(linear_shapes(model_config, args.target))


register(
    MethodSpec(
        name="dora",
        summary="LoRA on the direction of W plus a learned per-output magnitude; mergeable.",
        paper="Liu et al., DoRA, ICML 2024 (arXiv:2402.09353), Eq. 5",
        view=UnifiedView(
            form="m·(W0 + B·A)/||W0 + B·A||_c · x",
            position="attention (target modules)",
            insertion="parallel",
            composition="rescale",
        ),
        param_formula="L·Σ_targets (r·(d_in + d_out) + d_out)",
        apply=apply_dora,
        count_trainable=count_dora,
        count_tensors=count_dora_tensors,
        mergeable=True,
        autocast_adapters=True,
        # peft's forward, (c - 1) * base + c * s * lora_B(lora_A(x)) with the fp32 scale c =
        # m / ||W + s B A||, saves base (compute dtype) and the branch's output (fp32) for m's
        # gradient: p + 4 bytes per output feature, as a traced step measures (6 in bf16, 8 in
        # fp32; tests/plan/test_analytic.py). tunesmith's CPU DoRA node saves less.
        saved_per_output=(1, 4),
        # Its weight norm runs lora_B(lora_A(eye(d_in))) each forward: an fp32 d_in x d_in
        # identity and fp32 / bf16 d_out x d_in products alive until the forward returns
        # (traced: 4 d_in^2 + 7-15 bytes per d_in d_out above LoRA's peak).
        forward_transient=(4, 16),
        **LORA_FAMILY,
    )
)
