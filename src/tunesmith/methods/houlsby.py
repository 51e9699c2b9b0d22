"""Houlsby adapters: serial bottlenecks after attention and after the FFN.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751),
§2.1 and Fig. 2: two adapters per block, each applied to the output of a sub-layer's final
projection before the residual add: h <- h + W_up·ReLU(W_down·h). W_up = 0 at init, so the
adapted model starts equal to the base.
"""

from __future__ import annotations

from typing import Any

from tunesmith.methods.adapters import adapter_params, apply_bottleneck
from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, register
from tunesmith.methods.geometry import geometry


def apply_houlsby(model, args: MethodArgs):
    return apply_bottleneck(
        model, args, roles=("attn-out", "ffn-out"), insertion="serial", scale=1.0, variant="houlsby"
    )


def count_houlsby(model_config: Any, args: MethodArgs) -> int:
    return 2 * geometry(model_config).layers * adapter_params(model_config, args.bottleneck)


register(
    MethodSpec(
        name="houlsby",
        summary="Serial bottleneck adapters after attention and after the FFN of every block.",
        paper="Houlsby et al., ICML 2019 (arXiv:1902.00751), §2.1 / Fig. 2",
        view=UnifiedView(
            form="W_up·ReLU(W_down·h)",
            position="attention + ffn",
            insertion="serial",
            composition="add",
        ),
        param_formula="2·L·(2·d·m + m + d)",
        apply=apply_houlsby,
        count_trainable=count_houlsby,
    )
)
