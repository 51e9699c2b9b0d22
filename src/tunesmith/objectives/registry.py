"""The training objectives: what each needs and how its loss is computed from a model.

``sft`` is the plain causal-LM objective the loop has always run; the preference objectives
are registered here once, each with the data it needs (pairs or KTO's unpaired examples), whether
it needs a reference pass, and its parameters' defaults (one source of truth for the config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from tunesmith.objectives import losses
from tunesmith.objectives.batch import SequenceBatch, UnpairedBatch
from tunesmith.objectives.logps import SequenceLogps, sequence_logps
from tunesmith.objectives.losses import PreferenceLoss
from tunesmith.objectives.reference import reference_logps

# The reference policy's completion log-probs of a batch's rows (computed under no_grad).
Reference = Callable[[SequenceBatch], SequenceLogps]


def live_reference(model: nn.Module, frozen: nn.Module | None = None) -> Reference:
    """Score the reference on the fly: ``model`` with its adapter off, or a frozen copy."""
    return lambda rows: reference_logps(model, rows, frozen)


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective.

    Attributes:
        name: the ``--objective`` value.
        paper: citation and the equation implemented.
        data: ``"sft"`` (instruction records), ``"pairs"`` or ``"unpaired"`` (KTO).
        needs_reference: a reference pass (adapter off, or a frozen copy) runs every step.
        sequences_per_example: rows one example puts through the trained forward (pairs: 2;
            KTO: 1, its KL row runs without gradients).
        defaults: parameter name -> default (the papers' and TRL's).
        compute: ``(model, batch, params, reference) -> PreferenceLoss``, ``reference`` a
            :data:`Reference` (see :func:`live_reference`); None for ``sft``.
    """

    name: str
    paper: str
    data: str
    needs_reference: bool
    sequences_per_example: int
    defaults: dict[str, float] = field(default_factory=dict)
    compute: Callable[..., PreferenceLoss] | None = None


def _dpo(
    model: nn.Module, batch: SequenceBatch, params: dict[str, Any], reference: Reference
) -> PreferenceLoss:
    # The reference first: its no_grad pass peaks before the policy's activations are saved.
    ref_chosen, ref_rejected = reference(batch).halves()
    chosen, rejected = sequence_logps(model, batch).halves()
    out = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=params["beta"])
    if params["sft_weight"]:  # RPO: DPO alone can lower the chosen answers' likelihood too
        out.loss = out.loss + params["sft_weight"] * losses.chosen_nll(chosen)
    return out


def _orpo(
    model: nn.Module, batch: SequenceBatch, params: dict[str, Any], reference: Reference
) -> PreferenceLoss:
    chosen, rejected = sequence_logps(model, batch).halves()
    return losses.orpo_loss(chosen, rejected, beta=params["beta"])


def _simpo(
    model: nn.Module, batch: SequenceBatch, params: dict[str, Any], reference: Reference
) -> PreferenceLoss:
    chosen, rejected = sequence_logps(model, batch).halves()
    return losses.simpo_loss(chosen, rejected, beta=params["beta"], gamma=params["simpo_gamma"])


def _kto(
    model: nn.Module, batch: UnpairedBatch, params: dict[str, Any], reference: Reference
) -> PreferenceLoss:
    # z0 is detached (see kto_kl): both of its passes run without a graph.
    with torch.no_grad():
        policy_kl = sequence_logps(model, batch.kl_rows)
    kl = losses.kto_kl(policy_kl, reference(batch.kl_rows))
    ref = reference(batch.rows)
    return losses.kto_loss(
        sequence_logps(model, batch.rows),
        ref,
        batch.desirable,
        kl,
        beta=params["beta"],
        desirable_weight=params["desirable_weight"],
        undesirable_weight=params["undesirable_weight"],
    )


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("sft", "next-token cross-entropy on the completion", "sft", False, 1),
        ObjectiveSpec(
            "dpo",
            "Rafailov et al. 2023, Direct Preference Optimization, eq. 7 (arXiv:2305.18290)",
            "pairs",
            True,
            2,
            {"beta": 0.1, "sft_weight": 0.0},
            _dpo,
        ),
        ObjectiveSpec(
            "orpo",
            "Hong et al. 2024, ORPO: Monolithic Preference Optimization, eq. 6 (arXiv:2403.07691)",
            "pairs",
            False,
            2,
            {"beta": 0.1},
            _orpo,
        ),
        ObjectiveSpec(
            "simpo",
            "Meng et al. 2024, SimPO: Simple Preference Optimization, eq. 6 (arXiv:2405.14734)",
            "pairs",
            False,
            2,
            {"beta": 2.0, "simpo_gamma": 1.0},
            _simpo,
        ),
        ObjectiveSpec(
            "kto",
            "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, eq. 7 "
            "(arXiv:2402.01306)",
            "unpaired",
            True,
            # One row per example carries gradients; its mismatched KL row is scored under
            # no_grad (z0 is detached), like the reference passes, so it saves nothing.
            1,
            {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
            _kto,
        ),
    )
}


def get_objective(name: str) -> ObjectiveSpec:
    """The registered objective called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}"
        ) from None


def objective_params(spec: ObjectiveSpec, **overrides: float | None) -> dict[str, float]:
    """The spec's defaults with every non-None override applied (unknown names rejected)."""
    unknown = set(overrides) - set(spec.defaults)
    given = {k: v for k, v in overrides.items() if v is not None}
    if unknown & set(given):
        raise ValueError(
            f"objective {spec.name!r} has no parameter(s) {sorted(unknown & set(given))}"
        )
    return {**spec.defaults, **{k: v for k, v in given.items() if k in spec.defaults}}
