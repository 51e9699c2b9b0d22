"""Tokenized training data and the deterministic batch plan.

The batch plan is a pure function of (lengths, batch size, seed, epoch): that is what makes a
resumed run see exactly the examples an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tunesmith.data.records import Conversation
from tunesmith.data.render import IGNORE_INDEX, Rendered, render_example
from tunesmith.errors import DataError


def tokenize_conversations(
    tokenizer, convs: Sequence[Conversation], *, seq_len: int, train_on_prompt: bool = False
) -> list[Rendered]:
    """Render and tokenize; refuse data the model could not learn from.

    Raises:
        DataError: a record has no trained token (e.g. the answer was truncated away), or the
            end-of-turn token is never trained (the cause of models that never stop).
    """
    out = []
    eos = tokenizer.eos_token_id
    eos_trained = False
    for conv in convs:
        r = render_example(tokenizer, conv, train_on_prompt=train_on_prompt, max_len=seq_len)
        if r.num_trained == 0:
            raise DataError(
                f"record has no trained token after rendering (longer than --seq-len {seq_len}?)",
                conv.source or None,
            )
        eos_trained = eos_trained or eos in r.labels
        out.append(r)
    if out and not eos_trained:
        raise DataError(
            f"the end-of-turn token {tokenizer.eos_token!r} is never trained: the model would "
            "not learn to stop; check the chat template or --seq-len"
        )
    return out


def batch_plan(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """Micro-batches of example indices for one epoch.

    Length grouping sorts within windows of 64 batches, so each batch holds similar lengths
    (little padding) while the order across batches stays random.
    """
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if group_by_length:
        window = batch_size * 64
        grouped = []
        for i in range(0, len(order), window):
            chunk = order[i : i + window]
            grouped.extend(sorted(chunk, key=lambda j: lengths[j], reverse=True))
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
    return batches


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), 1 on real tokens, 0 on padding
    labels: torch.Tensor  # (B, T), IGNORE_INDEX where no loss
    # (B, T), set for packed rows (data/packing.py): restarts at every example.
    position_ids: torch.Tensor | None = None

    @property
    def num_trained(self) -> int:
        # Labels are shifted by one inside the loss, so the first position never counts.
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_examples(self) -> int:
        if self.position_ids is None:
            return int(self.input_ids.shape[0])
        # A packed row holds several examples, each a segment of its own (positions restart,
        # at 0 or at a shared prefix's length: data/packing.py); the padding's is masked.
        from tunesmith.data.packing import segment_starts

        return int((segment_starts(self.position_ids) & self.attention_mask.bool()).sum())

    @property
    def loss_units(self) -> int:
        """What a step's loss is averaged over: trained tokens."""
        return self.num_trained

    def to(self, device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            None if self.position_ids is None else self.position_ids.to(device),
        )


def collate(examples: Sequence[Rendered], pad_id: int, length: int = 0) -> Batch:
    """Right-pad a micro-batch to its longest example, or to ``length`` tokens if longer.

    Packed rows (:class:`tunesmith.data.packing.PackedRow`) also get their position ids; their
    padding is a segment of its own, which no trained token attends to.
    """
    T = max(length, *(len(e.input_ids) for e in examples))
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    if any(hasattr(e, "position_ids") for e in examples):
        from tunesmith.data.packing import padded_position_ids

        return Batch(ids, mask, labels, padded_position_ids(examples, T))
    return Batch(ids, mask, labels)
