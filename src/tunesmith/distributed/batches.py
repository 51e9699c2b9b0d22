"""A rank's share of each planned micro-batch.

The batch plan is made at the *global* micro-batch size (``--batch-size`` x world size) with
the run's seed, exactly as a single process would make it; rank ``r`` then takes its
contiguous slice. So N ranks at ``--batch-size b`` see, step for step, the examples one
process sees at ``--batch-size N*b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunesmith.data.dataset import Batch
from tunesmith.data.render import IGNORE_INDEX


def rank_slice(planned: Sequence[int], rank: int, world_size: int) -> tuple[list[int], bool]:
    """Rank ``rank``'s contiguous share of one planned micro-batch.

    Shares differ in size by at most one (the first ``len % world_size`` ranks get one more).
    A rank whose share would be empty (an epoch's last micro-batch smaller than the world)
    gets the planned micro-batch's first example as a stand-in, flagged ``True``: its
    forward and backward must still run, since every rank joins the same collectives, but
    it trains on no token.

    Returns:
        (example indices, stand_in)
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    base, extra = divmod(len(planned), world_size)
    start = rank * base + min(rank, extra)
    share = list(planned[start : start + base + (rank < extra)])
    if share:
        return share, False
    return list(planned[:1]), True


def stand_in(batch: Batch) -> Batch:
    """A copy of ``batch`` that trains on no token (all labels ignored)."""
    return Batch(
        batch.input_ids,
        batch.attention_mask,
        torch.full_like(batch.labels, IGNORE_INDEX),
        batch.position_ids,
    )


def align_micro_batches(batches: list[Batch], ctx) -> list[Batch]:
    """Pad this rank's micro-batches with stand-ins to the most any rank has.

    FSDP gathers parameters in every forward, so every rank must run as many passes; a rank
    with fewer (its slice was cut into fewer length-sorted passes) repeats its first one,
    training on nothing.
    """
    if not ctx.active:
        return batches
    most = int(ctx.max(len(batches)))
    return batches + [stand_in(batches[0]) for _ in range(most - len(batches))]
