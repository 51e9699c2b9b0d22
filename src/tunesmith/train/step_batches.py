"""Which examples an optimizer step sees, and as which forward passes.

One micro-batch plan per epoch (:func:`tunesmith.data.dataset.batch_plan`) and the global step
fully determine a step's examples, so resuming at step N replays nothing and skips nothing.
Each planned micro-batch then runs as the forward passes a
:class:`~tunesmith.train.fastpath.PassPolicy` cuts it into (a speed choice: the step's
examples and its loss normalisation stay the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunesmith.data.dataset import Batch, batch_plan
from tunesmith.data.render import IGNORE_INDEX, Rendered
from tunesmith.distributed import DistContext, rank_slice
from tunesmith.train.fastpath import PassPolicy


class StepBatches:
    """The micro-batches (as forward passes) of every optimizer step, derived, not iterated.

    Args:
        examples: The tokenized training examples.
        pad_id: Padding token id.
        batch_size: Examples per planned micro-batch (per process).
        grad_accum: Micro-batches per optimizer step.
        seed: Seeds the per-epoch batch plan.
        group_by_length: Length-grouped batches (see :func:`~tunesmith.data.dataset.batch_plan`).
        dist: Several processes: each takes its slice of every planned micro-batch.
        policy: How a micro-batch is cut into forward passes.
    """

    def __init__(
        self,
        examples: Sequence[Rendered],
        pad_id: int,
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        group_by_length: bool,
        dist: DistContext,
        policy: PassPolicy,
    ):
        self.examples = examples
        self.pad_id = pad_id
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.seed, self.group_by_length = seed, group_by_length
        self.dist = dist
        self.policy = policy
        self.lengths = [len(e.input_ids) for e in examples]

    def of_step(self, step: int, split: int = 1) -> list[Batch]:
        """The passes of optimizer step ``step`` (0-based).

        ``split`` cuts each planned micro-batch into that many pieces: the step still sees
        exactly the same examples, so an OOM retry changes memory, not the data.
        """
        plans: dict[int, list[list[int]]] = {}
        world, rank = self.dist.world_size, self.dist.rank
        # Planned at the global micro-batch size; each rank then takes its slice of it.
        global_batch = self.batch_size * world
        per_epoch = math.ceil(len(self.examples) / global_batch)
        out = []
        for k in range(step * self.grad_accum, (step + 1) * self.grad_accum):
            epoch, idx = divmod(k, per_epoch)
            if epoch not in plans:
                plans[epoch] = batch_plan(
                    self.lengths, global_batch, self.seed, epoch, self.group_by_length
                )
            planned = plans[epoch][idx]
            stand_in = False
            if world > 1:
                planned, stand_in = rank_slice(planned, rank, world)
            size = math.ceil(len(planned) / split)
            out.extend(self.policy.passes(planned, self.examples, self.lengths, size, self.pad_id))
            if stand_in:  # this rank has no example here: run one, train on no token
                out[-1].labels.fill_(IGNORE_INDEX)
        return out
