"""Pair and unpaired batches for the preference objectives, in TRL's concatenated layout.

A pair batch of B examples holds 2B right-padded rows: the B ``prompt + chosen`` rows first,
then the B ``prompt + rejected`` rows, so one forward pass scores both sides (and a
``completion_mask`` marks the completion tokens whose log-probs count). A KTO batch holds one
row per example plus, for the KL estimate, a *mismatched* row per example: example i's prompt
with example i-1's completion (Ethayarajh et al. 2024, sec. 4.1; TRL's order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairIds:
    """One tokenized preference pair (token ids, no padding)."""

    prompt: Sequence[int]
    chosen: Sequence[int]
    rejected: Sequence[int]


@dataclass(frozen=True)
class UnpairedIds:
    """One tokenized KTO example: a completion marked desirable (True) or not."""

    prompt: Sequence[int]
    completion: Sequence[int]
    desirable: bool


@dataclass
class SequenceBatch:
    """Right-padded rows with the mask of the tokens whose log-probs are scored.

    Attributes:
        input_ids: (N, T) token ids.
        attention_mask: (N, T) 1 on real tokens.
        completion_mask: (N, T) 1 on completion tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask))
        )


@dataclass
class UnpairedBatch:
    """A KTO batch: the examples, their labels and the mismatched rows of the KL estimate."""

    rows: SequenceBatch
    desirable: torch.Tensor  # (N,) bool
    kl_rows: SequenceBatch


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> SequenceBatch:
    """Right-pad ``(prompt ids, completion ids)`` rows into one :class:`SequenceBatch`."""
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, comp) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(comp)
        ids[i, :n] = torch.tensor(list(prompt) + list(comp), dtype=torch.long)
        attention[i, :n] = 1
        completion[i, n_p:n] = 1
    return SequenceBatch(ids, attention, completion)


def collate_pairs(pairs: Sequence[PairIds], pad_id: int) -> SequenceBatch:
    """2B rows: every chosen completion, then every rejected one (same prompt order)."""
    if not pairs:
        raise ValueError("an empty pair batch")
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    return pad_rows(rows, pad_id)


def collate_unpaired(examples: Sequence[UnpairedIds], pad_id: int) -> UnpairedBatch:
    """The KTO batch; the KL rows pair prompt i with completion i-1 (cyclically), as TRL does."""
    if not examples:
        raise ValueError("an empty KTO batch")
    n = len(examples)
    rows = pad_rows([(e.prompt, e.completion) for e in examples], pad_id)
    kl = pad_rows([(examples[i].prompt, examples[i - 1].completion) for i in range(n)], pad_id)
    desirable = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
    return UnpairedBatch(rows, desirable, kl)
