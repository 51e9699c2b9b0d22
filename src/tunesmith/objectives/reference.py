"""The reference policy's log-probs, without a second copy of the model where one can avoid it.

A PEFT model *is* its reference with the adapter switched off (``disable_adapter()``), so
DPO and KTO need no second model for the PEFT methods; full fine-tuning, whose updates land in
the base weights, passes a frozen copy (or precomputed log-probs). Either way the pass runs
under ``no_grad``: it saves no activations for the backward.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from tunesmith.objectives.batch import SequenceBatch
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
