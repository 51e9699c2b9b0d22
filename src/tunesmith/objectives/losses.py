"""The four preference losses, as functions of per-sequence log-probs.

Each returns a :class:`PreferenceLoss`: the batch loss (a mean over examples) and the implicit
rewards the evaluation and logs report. Defaults are the papers' (and TRL's); the parity tests
in ``tests/objectives`` hold these functions to TRL's trainers within 1e-4 in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.objectives.logps import SequenceLogps


@dataclass
class PreferenceLoss:
    """A batch loss and the detached per-example rewards behind it.

    Attributes:
        loss: scalar to minimize.
        chosen_rewards: (B,) reward of each chosen (KTO: desirable) completion.
        rejected_rewards: (B,) reward of each rejected (KTO: undesirable) completion.
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    ref_chosen: SequenceLogps,
    ref_rejected: SequenceLogps,
    beta: float = 0.1,
) -> PreferenceLoss:
    """DPO's sigmoid loss (Rafailov et al. 2023, eq. 7, arXiv:2305.18290).

    ``-log σ(β·[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))])``; the
    implicit reward of a completion is ``β·(log π - log π_ref)``.
    """
    chosen_ratio = chosen.total - ref_chosen.total
    rejected_ratio = rejected.total - ref_rejected.total
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return PreferenceLoss(loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def chosen_nll(chosen: SequenceLogps) -> torch.Tensor:
    """The chosen completions' token-mean NLL over the batch: ORPO's SFT term, and the SFT term
    added to DPO with ``--sft-weight`` (TRL's ``loss_type="sft"``)."""
    return -chosen.total.sum() / chosen.tokens.sum().clamp(min=1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


def orpo_loss(chosen: SequenceLogps, rejected: SequenceLogps, beta: float = 0.1) -> PreferenceLoss:
    """ORPO (Hong et al. 2024, eqs. 4-7, arXiv:2403.07691): SFT NLL plus λ·odds-ratio term.

    With ``p = exp(mean log-prob)``, ``log odds(y) = log p - log(1 - p)``; the loss is the
    chosen completions' token-mean NLL minus ``λ·log σ(log odds(y_w) - log odds(y_l))``.
    ``beta`` is the paper's λ. No reference model.
    """
    cm, rm = chosen.mean.float(), rejected.mean.float()
    log_odds = (cm - rm) - (_log1mexp(cm) - _log1mexp(rm))
    loss = chosen_nll(chosen) - beta * F.logsigmoid(log_odds).mean()
    return PreferenceLoss(loss, beta * cm.detach(), beta * rm.detach())


def simpo_loss(
    chosen: SequenceLogps, rejected: SequenceLogps, beta: float = 2.0, gamma: float = 1.0
) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, eq. 6, arXiv:2405.14734): length-normalized, margin γ, no reference.

    ``-log σ(β/|y_w|·log π(y_w) - β/|y_l|·log π(y_l) - γ)``. The defaults are the paper's
    recipe (β = 2, γ/β = 0.5); the reward is ``β·mean log-prob``.
    """
    cm, rm = chosen.mean, rejected.mean
    loss = -F.logsigmoid(beta * (cm - rm) - gamma).mean()
    return PreferenceLoss(loss, beta * cm.detach(), beta * rm.detach())


def kto_kl(policy_kl: SequenceLogps, ref_kl: SequenceLogps) -> torch.Tensor:
    """KTO's reference point z₀: the batch's mean log-ratio on mismatched completions, ≥ 0.

    Detached: the paper does not back-propagate through z₀ (Ethayarajh et al. 2024, sec. 4.1).
    """
    return (policy_kl.total - ref_kl.total).mean().detach().clamp(min=0)


def kto_loss(
    policy: SequenceLogps,
    reference: SequenceLogps,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLoss:
    """KTO (Ethayarajh et al. 2024, eq. 7, arXiv:2402.01306) on unpaired examples.

    A desirable completion costs ``λ_D·(1 - σ(β·(r - z₀)))``, an undesirable one
    ``λ_U·(1 - σ(β·(z₀ - r)))``, with ``r = log π - log π_ref`` and ``z₀`` from :func:`kto_kl`;
    the loss is the mean over the batch.
    """
    ratio = policy.total - reference.total
    good, bad = ratio[desirable], ratio[~desirable]
    losses = torch.cat(
        (
            desirable_weight * (1 - torch.sigmoid(beta * (good - kl))),
            undesirable_weight * (1 - torch.sigmoid(beta * (kl - bad))),
        )
    )
    return PreferenceLoss(losses.nanmean(), beta * good.detach(), beta * bad.detach())
