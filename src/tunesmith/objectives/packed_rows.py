"""A preference batch as one packed row, each prompt stored once for the completions sharing it.

A pair batch (:mod:`~tunesmith.objectives.batch`) holds ``2B`` right-padded rows: every
``prompt + chosen``, then every ``prompt + rejected``. Each pair's prompt is computed twice,
and every row is padded to the longest. On the CPU fast paths (where SFT runs packed passes,
``train/fastpath/passes.py``) the batch runs as one packed row instead::

    tokens:     [ prompt + chosen ][ prompt[-1] + rejected ][ prompt' + chosen' ] ...
    positions:   0 .. P+c-1          P-1 .. P+r-1             0 .. P'+c'-1

A completion after its group's first continues that row's first ``P - 1`` tokens (its
positions start at ``P - 1``, ``data/packing.py``'s groups): the attention lets it see them
and its own tokens, nothing else, so every scored token sees exactly the keys, at exactly the
positions, it sees in its own padded row. Its first token is the prompt's last, whose hidden
state scores the completion's first token. On the demo's clinic pairs (prompt 42 tokens,
completions 32) a batch of 8 pairs is 1,496 padded tokens for 1,182 real ones, and 853 in the
packed row (benchmarks/RESULTS.md, "Preference batches as packed rows").

Rows with different prompts (KTO's examples, its mismatched KL rows) are packed side by side
and share nothing. The log-probs are the padded rows' up to float rounding (sums in another
order; the prompt's gradient one sum where the copies' were rounded apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.packing import CPU_PASS_BUCKET_TOKENS, bucketed_length, pack_row
from tunesmith.data.render import IGNORE_INDEX, Rendered
from tunesmith.objectives.batch import SequenceBatch


@dataclass
class PackedSequences:
    """One packed row of a :class:`SequenceBatch`, and where its scored tokens are.

    Attributes:
        input_ids: (1, T) the row, padded to a multiple of the length bucket.
        attention_mask: (1, T) 1 on the row's tokens, 0 on its padding.
        position_ids: (1, T) each example's positions; the padding restarts at 0.
        positions: (M,) the row positions whose hidden state scores a completion token.
        targets: (M,) that token.
        owners: (M,) the batch row the token belongs to; each row's in order, rows apart.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    owners: torch.Tensor


def pack_sequences(batch: SequenceBatch, bucket: int = CPU_PASS_BUCKET_TOKENS) -> PackedSequences:
    """``batch``'s rows as one packed row, rows with the same prompt sharing it (the module
    docstring's layout), padded up to a multiple of ``bucket`` tokens."""
    rows = batch.input_ids.tolist()
    lengths = batch.attention_mask.sum(-1).tolist()
    masks = batch.completion_mask.bool().tolist()
    # Rows by prompt (the tokens before the first scored one), in order of first appearance:
    # a group's completions follow its first one in the row.
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, (n, mask) in enumerate(zip(lengths, masks, strict=True)):
        first = next((i for i in range(1, n) if mask[i]), n)
        groups.setdefault(tuple(rows[row][:first]), []).append(row)
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    owners: list[int] = []  # the batch row of each row token
    for prompt, members in groups.items():
        parts = [_example(rows[r][: lengths[r]], masks[r][: lengths[r]]) for r in members]
        # The prompt but its last token, stored once (its last scores each first completion
        # token); pack_row ignores each part's first label, never a completion token here.
        group = pack_row(parts, max(len(prompt) - 1, 0))
        ids += group.input_ids
        labels += group.labels
        positions += group.position_ids
        owners += [r for r, n in zip(members, group.lengths, strict=True) for _ in range(n)]
    # A hidden state scores the next token of its own example: where that token has a label.
    scored = [
        (i, labels[i + 1], owners[i]) for i in range(len(ids) - 1) if labels[i + 1] != IGNORE_INDEX
    ]
    real = len(ids)
    width = bucketed_length(real, bucket, batch.input_ids.numel())
    # The padding's token ids are never read by a real token nor scored: any id will do.
    input_ids = torch.zeros((1, width), dtype=torch.long)
    input_ids[0, :real] = torch.tensor(ids, dtype=torch.long)
    attention_mask = torch.zeros((1, width), dtype=torch.long)
    attention_mask[0, :real] = 1
    position_ids = torch.tensor([positions + list(range(width - real))], dtype=torch.long)
    where = torch.tensor(scored, dtype=torch.long).view(-1, 3).t().contiguous()  # 3 rows
    device = batch.input_ids.device
    return PackedSequences(
        *(t.to(device) for t in (input_ids, attention_mask, position_ids, *where))
    )


def _example(tokens: list[int], scored: list[bool]) -> Rendered:
    """One row's tokens, labelled where scored (the completion), ``IGNORE_INDEX`` elsewhere."""
    return Rendered(tokens, [t if m else IGNORE_INDEX for t, m in zip(tokens, scored, strict=True)])
