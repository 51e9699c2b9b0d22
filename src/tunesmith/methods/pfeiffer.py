"""Pfeiffer adapters: one serial bottleneck after the FFN of every block.

Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for Transfer Learning",
EACL 2021 (arXiv:2005.00247), §2.2 / Fig. 2 and their architecture search (Appendix): a single
adapter after the FFN matches Houlsby's two at half the parameters. h <- h + W_up·ReLU(W_down·h),
W_up = 0 at init.
"""

from __future__ import annotations

from tunesmith.methods.adapters import ADAPTER_LR, bottleneck_builders
from tunesmith.methods.base import MethodSpec, UnifiedView, register

BUILDERS = bottleneck_builders(
    roles=("ffn-out",), insertion="serial", variant="pfeiffer", scale=1.0
)

register(
    MethodSpec(
        name="pfeiffer",
        summary="One serial bottleneck adapter after the FFN of every block.",
        paper="Pfeiffer et al., AdapterFusion, EACL 2021 (arXiv:2005.00247), §2.2",
        view=UnifiedView(
            form="W_up·ReLU(W_down·h)", position="ffn", insertion="serial", composition="add"
        ),
        param_formula="L·(2·d·m + m + d)",
        default_lr=ADAPTER_LR,
        **BUILDERS,
    )
)
