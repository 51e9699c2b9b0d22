"""The reference policy's log-probs, without a second copy of the model where one can avoid it.

A PEFT model *is* its reference with the adapter switched off (``disable_adapter()``), so
DPO and KTO need no second model for the PEFT methods; full fine-tuning, whose updates land in
the base weights, passes a frozen copy. Where the reference is the *starting* adapter (a run
continued from an SFT run with ``--init-from``), :class:`ReferenceCache` scores every pair
once before the first step and the loop reads the cache. Either way the reference runs under
``no_grad``: it saves no activations for the backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from tunesmith.objectives.batch import PairIds, SequenceBatch, collate_pairs
from tunesmith.objectives.logps import SequenceLogps, sequence_logps


def reference_logps(
    model: nn.Module, batch: SequenceBatch, frozen: nn.Module | None = None
) -> SequenceLogps:
    """Completion log-probs under the reference: ``frozen`` if given, else ``model`` with its adapter off.

    Raises:
        ValueError: no frozen copy and ``model`` has no adapter to switch off.
    """
    if frozen is not None:
        scope, scorer = contextlib.nullcontext(), frozen
    elif hasattr(model, "disable_adapter"):
        scope, scorer = model.disable_adapter(), model
    else:
        raise ValueError(
            "a reference-based objective needs a PEFT model (its base is the reference) "
            "or a frozen copy of the starting weights"
        )
    with torch.no_grad(), scope:
        return sequence_logps(scorer, batch)


@dataclass
class ReferenceCache:
    """Reference log-probs of every pair, scored once (no second model, no per-step pass).

    Attributes:
        chosen: (N, 2) summed log-prob and token count of each chosen completion.
        rejected: (N, 2) the same for each rejected completion.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor

    @classmethod
    @torch.no_grad()
    def score(
        cls, model: nn.Module, pairs: Sequence[PairIds], pad_id: int, device, batch_size: int = 8
    ) -> ReferenceCache:
        """Score ``pairs`` with ``model`` as it is now (the reference), batch by batch."""
        was_training = model.training
        model.eval()
        chosen, rejected = [], []
        for i in range(0, len(pairs), batch_size):
            c, r = sequence_logps(
                model, collate_pairs(pairs[i : i + batch_size], pad_id).to(device)
            ).halves()
            chosen.append(torch.stack([c.total, c.tokens], -1).float().cpu())
            rejected.append(torch.stack([r.total, r.tokens], -1).float().cpu())
        model.train(was_training)
        if not chosen:  # no pairs (e.g. no held-out pair): an empty cache, not a failed run
            return cls(torch.zeros(0, 2), torch.zeros(0, 2))
        return cls(torch.cat(chosen), torch.cat(rejected))

    def rows(self, indices: Sequence[int], device=None) -> SequenceLogps:
        """The cached log-probs of a pair batch of these examples (chosen rows, then rejected)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        both = torch.cat([self.chosen[idx], self.rejected[idx]]).to(device)
        return SequenceLogps(both[:, 0], both[:, 1])

    def save(self, path: str | Path) -> None:
        torch.save({"chosen": self.chosen, "rejected": self.rejected}, path)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceCache:
        data = torch.load(path, weights_only=True)
        return cls(data["chosen"], data["rejected"])
