"""Per-rank memory when several processes train one model (DDP, FSDP, DeepSpeed ZeRO).

Each rank runs its own micro-batch (``--batch-size`` is per rank), so activations, logits
and runtime overhead stay what one process needs. What changes is who holds the model state:

- ``ddp``: every rank a full replica; nothing divided.
- ``zero1``: the optimizer state divided over the N ranks.
- ``zero2``: optimizer state and gradients divided.
- ``fsdp`` (FULL_SHARD) and ``zero3``: weights, trainable parameters, gradients and optimizer
  state divided; in exchange, the parameters of the unit being computed are gathered whole:
  the root unit (embedding and head) plus one decoder layer, twice (the next layer is
  prefetched while this one runs).

References: Rajbhandari et al. 2020, ZeRO (arXiv:1910.02054), Sec. 5 (stages 1-3); Zhao et
al. 2023, PyTorch FSDP (arXiv:2304.11277), Sec. 3 (full sharding, prefetching).
"""

from __future__ import annotations

import math
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.shape import ModelShape

SHARDINGS = ("ddp", "fsdp", "zero1", "zero2", "zero3")
# What each mode divides by the number of ranks.
_DIVIDED = {
    "ddp": (),
    "zero1": ("optimizer",),
    "zero2": ("optimizer", "gradients"),
    "zero3": ("optimizer", "gradients", "weights", "trainable"),
    "fsdp": ("optimizer", "gradients", "weights", "trainable"),
}


def check_sharding(nproc: Any, sharding: str) -> None:
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError("nproc", nproc, "a positive integer")
    if sharding not in SHARDINGS:
        raise ConfigError("distributed", sharding, ", ".join(SHARDINGS))


def gathered_bytes(shape: ModelShape, weights: int) -> int:
    """Bytes of parameters gathered whole at once under full sharding.

    ``weights`` is the model's weight bytes as loaded (its dtype sets bytes per parameter).
    """
    per_param = weights / max(shape.total_params, 1)
    layer = (shape.linear_params + shape.other_params) / max(shape.layers, 1)
    root = shape.embed_params + shape.lm_head_params
    return math.ceil(per_param * (root + 2 * layer))


def shard_terms(
    terms: dict[str, int], shape: ModelShape, nproc: int, sharding: str
) -> dict[str, int]:
    """Per-rank byte terms (``weights``, ``trainable``, ``gradients``, ``optimizer`` ...).

    Terms not named in the mode's divided set pass through; under full sharding the gathered
    parameters are added to ``weights`` (and reported as ``gathered_params``).
    """
    check_sharding(nproc, sharding)
    out = dict(terms)
    if nproc == 1:
        return out
    for key in _DIVIDED[sharding]:
        out[key] = math.ceil(out[key] / nproc)
    if "weights" in _DIVIDED[sharding]:
        gathered = min(gathered_bytes(shape, terms["weights"]), terms["weights"])
        out["weights"] += gathered
        out["gathered_params"] = gathered
    return out
