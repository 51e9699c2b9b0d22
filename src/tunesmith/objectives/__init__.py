"""Training objectives beyond SFT: DPO, ORPO, SimPO and KTO on preference data.

Blocks only: the pair/unpaired batch layout (``batch``), the completion log-prob of a row
(``logps``), the losses as functions of log-probs (``losses``), the reference pass with the
adapter switched off (``reference``) and the registry of objectives (``registry``). It depends
on torch alone, so ``train``, ``eval`` and ``plan`` can all use it.
"""

from tunesmith.objectives.batch import (
    PairIds,
    SequenceBatch,
    UnpairedBatch,
    UnpairedIds,
    collate_pairs,
    collate_unpaired,
)
from tunesmith.objectives.logps import SequenceLogps, sequence_logps, token_logps
from tunesmith.objectives.losses import (
    PreferenceLoss,
    dpo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    simpo_loss,
)
from tunesmith.objectives.reference import ReferenceCache, reference_logps
from tunesmith.objectives.registry import (
    OBJECTIVES,
    ObjectiveSpec,
    Reference,
    get_objective,
    live_reference,
    objective_params,
)

__all__ = [
    "OBJECTIVES",
    "ObjectiveSpec",
    "PairIds",
    "PreferenceLoss",
    "Reference",
    "ReferenceCache",
    "SequenceBatch",
    "SequenceLogps",
    "UnpairedBatch",
    "UnpairedIds",
    "collate_pairs",
    "collate_unpaired",
    "dpo_loss",
    "get_objective",
    "kto_kl",
    "kto_loss",
    "live_reference",
    "objective_params",
    "orpo_loss",
    "reference_logps",
    "sequence_logps",
    "simpo_loss",
    "token_logps",
]
