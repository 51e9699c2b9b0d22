"""What a fast path checks about the call it is in: the compute dtype, and whether several
ranks train (then the distributed engine owns where each weight lives)."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype ``F.linear(x, weight)`` computes in here, or None where that is not one plain
    dtype: under autocast the autocast dtype when ``x`` has it already (tunesmith's bf16 training
    of fp32 adapter weights), else the dtype ``x`` and ``weight`` share."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return dtype if x.dtype == dtype else None
    return x.dtype if x.dtype == weight.dtype else None


def several_ranks() -> bool:
    """Whether this process is one of several ranks of a distributed run."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
