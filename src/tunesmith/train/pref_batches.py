"""The preference objectives' side of the loop: pair micro-batches per step, and their loss.

:class:`PreferenceBatches` plans a step's examples exactly as the SFT plan does
(:func:`~tunesmith.data.dataset.batch_plan`, a pure function of the step), so a resumed DPO
run replays nothing and skips nothing. Its micro-batches count ``loss_units`` in examples:
the loop divides the summed per-example losses by the step's examples, whatever the
accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.data.dataset import batch_plan
from tunesmith.objectives.batch import (
    PairIds,
    SequenceBatch,
    UnpairedBatch,
    UnpairedIds,
    collate_pairs,
    collate_unpaired,
)
from tunesmith.objectives.reference import ReferenceCache
from tunesmith.objectives.registry import ObjectiveSpec, Reference, live_reference


@dataclass
class PreferenceMicroBatch:
    """One forward pass's worth of pairs (or KTO examples), in the objectives' layout."""

    batch: SequenceBatch | UnpairedBatch
    indices: tuple[int, ...]  # the examples' positions in the training set

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    @property
    def rows(self) -> SequenceBatch:
        return self.batch.rows if isinstance(self.batch, UnpairedBatch) else self.batch

    @property
    def num_trained(self) -> int:
        """Completion tokens scored with gradients (the throughput figure)."""
        return int(self.rows.completion_mask[:, 1:].sum())

    @property
    def loss_units(self) -> int:
        return self.num_examples

    def to(self, device) -> PreferenceMicroBatch:
        b = self.batch
        if isinstance(b, UnpairedBatch):
            b = UnpairedBatch(b.rows.to(device), b.desirable.to(device), b.kl_rows.to(device))
        else:
            b = b.to(device)
        return PreferenceMicroBatch(b, self.indices)


def collate_examples(
    examples: Sequence[PairIds | UnpairedIds], indices: Sequence[int], pad_id: int
) -> PreferenceMicroBatch:
    """The examples at ``indices`` (pairs or KTO examples) as one micro-batch."""
    chosen = [examples[j] for j in indices]
    if isinstance(chosen[0], UnpairedIds):
        return PreferenceMicroBatch(collate_unpaired(chosen, pad_id), tuple(indices))  # type: ignore[arg-type]
    return PreferenceMicroBatch(collate_pairs(chosen, pad_id), tuple(indices))  # type: ignore[arg-type]


def example_length(e: PairIds | UnpairedIds) -> int:
    if isinstance(e, UnpairedIds):
        return len(e.prompt) + len(e.completion)
    return len(e.prompt) + max(len(e.chosen), len(e.rejected))


class PreferenceBatches:
    """The micro-batches of every optimizer step over tokenized pairs, derived from the step.

    Args:
        examples: Tokenized pairs or KTO examples.
        pad_id: Padding token id.
        batch_size: Examples per micro-batch.
        grad_accum: Micro-batches per optimizer step.
        seed: Seeds the per-epoch plan.
        group_by_length: Length-grouped batches.
    """

    def __init__(
        self,
        examples,
        pad_id: int,
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        group_by_length: bool,
    ):
        self.examples, self.pad_id = examples, pad_id
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.seed, self.group_by_length = seed, group_by_length
        self.lengths = [example_length(e) for e in examples]

    def of_step(self, step: int, split: int = 1) -> list[PreferenceMicroBatch]:
        """The passes of step ``step``; ``split`` cuts each micro-batch (an OOM retry)."""
        per_epoch = math.ceil(len(self.examples) / self.batch_size)
        out: list[PreferenceMicroBatch] = []
        plans: dict[int, list[list[int]]] = {}
        for k in range(step * self.grad_accum, (step + 1) * self.grad_accum):
            epoch, idx = divmod(k, per_epoch)
            if epoch not in plans:
                plans[epoch] = batch_plan(
                    self.lengths, self.batch_size, self.seed, epoch, self.group_by_length
                )
            planned = plans[epoch][idx]
            size = math.ceil(len(planned) / split)
            for i in range(0, len(planned), size):
                out.append(collate_examples(self.examples, planned[i : i + size], self.pad_id))
        return out


def objective_loss_fn(
    spec: ObjectiveSpec,
    params: dict[str, Any],
    frozen: torch.nn.Module | None = None,
    cache: ReferenceCache | None = None,
) -> Callable[[torch.nn.Module, PreferenceMicroBatch], torch.Tensor]:
    """The loop's ``loss_fn``: the objective's mean loss times the examples (a sum over them).

    The reference: ``cache`` (scored before the first step) when given; else ``frozen`` for
    methods that train the base weights (full, freeze); else the model with its adapter off.
    """
    if spec.compute is None:
        raise ValueError(f"objective {spec.name!r} runs the plain causal-LM loss")

    def loss_sum(model: torch.nn.Module, mb: PreferenceMicroBatch) -> torch.Tensor:
        if cache is not None:
            device = mb.rows.input_ids.device
            reference: Reference = lambda _rows: cache.rows(mb.indices, device)  # noqa: E731
        else:
            reference = live_reference(model, frozen)
        return spec.compute(model, mb.batch, params, reference).loss * mb.num_examples

    return loss_sum
