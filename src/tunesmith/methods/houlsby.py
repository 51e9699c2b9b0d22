"""Houlsby adapters: serial bottlenecks after attention and after the FFN.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751),
§2.1 and Fig. 2: two adapters per block, each applied to the output of a sub-layer's final
projection before the residual add: h <- h + W_up·ReLU(W_down·h). W_up = 0 at init, so the
adapted model starts equal to the base.
"""

from __future__ import annotations

from tunesmith.methods.adapters import ADAPTER_LR, bottleneck_builders
from tunesmith.methods.base import MethodSpec, UnifiedView, register

BUILDERS = bottleneck_builders(
    roles=("attn-out", "ffn-out"), insertion="serial", variant="houlsby", scale=1.0
)

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
        default_lr=ADAPTER_LR,
        **BUILDERS,
    )
)
