"""Full tensors out of sharded parameters and optimizer state, and back in.

Checkpoints and the final adapter hold *full* (gathered) tensors in the single-process
format, whatever the world size: an FSDP shard (a ``DTensor``) is gathered with
``full_tensor()`` on save (a collective: every rank calls it, in the same order) and cut back
into this rank's shard with ``distribute_tensor`` on load. Plain tensors pass through, so a
single process and DDP (replicated parameters) take the same path at no cost.
"""

from __future__ import annotations

from typing import Any

import torch


def _is_dtensor(x: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (a plain tensor is returned as is)."""
    return t.full_tensor() if _is_dtensor(t) else t


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor) cut like ``like``: this rank's shard when ``like`` is one."""
    if not _is_dtensor(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements)


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # state_dict() numbers parameters in this order.
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor gathered."""
    sd = optimizer.state_dict()
    sd["state"] = {
        idx: {k: full(v) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
        for idx, st in sd["state"].items()
    }
    return sd


def shard_optimizer_state(sd: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A full optimizer state dict (from a checkpoint) cut into this rank's shards."""
    params = _optimizer_params(optimizer)
    state = {}
    for idx, st in sd["state"].items():
        p = params[int(idx)]
        state[idx] = {
            k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
            for k, v in st.items()
        }
    return {**sd, "state": state}
