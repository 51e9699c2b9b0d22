"""Named starting values for the LoRA family's placement and size (``--recipe``).

``default`` puts a rank-4 update on every linear layer of each block; ``seed`` is the original
LoRA recipe (Hu et al. 2021: query and value projections, rank 8), the one tunesmith shipped
first. On the demo at the same steps and learning rate, every-linear rank 4 learned more and
forgot about a quarter as much as q,v rank 8 with 0.9% of the parameters
(benchmarks/RESULTS.md, "The default LoRA recipe"), as "LoRA Without Regret" (Schulman et
al. 2025) found: LoRA on the MLP as well matches full fine-tuning where attention-only does not.
``--target``, ``--rank`` or ``--alpha`` given explicitly win over the recipe's.
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
