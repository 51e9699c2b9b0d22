"""Parallel adapter at the FFN with scaled composition.

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022
(arXiv:2110.04366), Eq. 10 and §4.3: the adapter reads the FFN's input x and its output is added
beside the FFN, h <- FFN(x) + s·W_up·ReLU(W_down·x), with s = 4 (``MethodArgs.scale``).
W_up = 0 at init, so the adapted model starts equal to the base.
"""

from __future__ import annotations

from tunesmith.methods.adapters import ADAPTER_LR, bottleneck_builders
from tunesmith.methods.base import MethodSpec, UnifiedView, register

BUILDERS = bottleneck_builders(roles=("ffn",), insertion="parallel", variant="parallel", scale=None)

register(
    MethodSpec(
        name="parallel",
        summary="Bottleneck adapter beside the FFN, reading its input, scaled by s (default 4).",
        paper="He et al., Unified View of PETL, ICLR 2022 (arXiv:2110.04366), Eq. 10",
        view=UnifiedView(
            form="W_up·ReLU(W_down·x)",
            position="ffn",
            insertion="parallel",
            composition="scaled add",
        ),
        param_formula="L·(2·d·m + m + d)",
        default_lr=ADAPTER_LR,
        **BUILDERS,
    )
)
