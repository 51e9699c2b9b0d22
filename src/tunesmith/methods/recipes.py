"""Named starting values for the LoRA family's placement, size and dropout (``--recipe``).

``default`` puts a rank-4 update without dropout on every linear layer of each block; ``seed``
is the original LoRA recipe (Hu et al. 2021: query and value projections, rank 8, here with
dropout 0.05), the one tunesmith shipped first. On the demo at the same steps and learning
rate the default learned more (0.942 vs 0.875 execution accuracy) and forgot less (+8% vs +27%
general-text perplexity) with 0.9% of the parameters (benchmarks/RESULTS.md, "The default
LoRA recipe"), as "LoRA Without Regret" (Schulman et al. 2025) found: LoRA on the MLP as well
matches full fine-tuning where attention-only does not. Dropout is off because each adapted
projection would keep its own masked copy of its input: with seven per block that made a step
~1.4x slower and learned less. ``--target``, ``--rank``, ``--alpha`` or ``--dropout`` given
explicitly win over the recipe's.
"""

from __future__ import annotations

from types import MappingProxyType

RECIPES = MappingProxyType(
    {
        "default": MappingProxyType(
            {"target": "all-linear", "rank": 4, "alpha": 32.0, "dropout": 0.0}
        ),
        "seed": MappingProxyType({"target": "attn-qv", "rank": 8, "alpha": 32.0, "dropout": 0.05}),
    }
)
DEFAULT_RECIPE = RECIPES["default"]
