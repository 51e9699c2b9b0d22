"""The log-probability of a completion given its prompt: summed over completion tokens.

Every preference objective is a function of these per-sequence sums (and their token
counts, for the length-normalized SimPO and ORPO). Position t's logits predict token t+1,
so the mask is shifted by one; padding and prompt tokens never count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from tunesmith.data.packing import attention_inputs, packed_scoring
from tunesmith.loss.causal_lm import causal_lm_module
from tunesmith.loss.head_ce import head_token_nll
from tunesmith.objectives.batch import SequenceBatch
from tunesmith.objectives.packed_rows import pack_sequences


@dataclass
class SequenceLogps:
    """Per-row completion log-probs.

    Attributes:
        total: (N,) sum of log p(token | prefix) over the completion tokens.
        tokens: (N,) number of completion tokens.
    """

    total: torch.Tensor
    tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """(N,) the length-normalized log-prob (SimPO's reward, ORPO's odds)."""
        return self.total / self.tokens.clamp(min=1)

    def halves(self) -> tuple[SequenceLogps, SequenceLogps]:
        """The chosen and the rejected rows of a pair batch (chosen first)."""
        n = self.total.shape[0] // 2
        return (
            SequenceLogps(self.total[:n], self.tokens[:n]),
            SequenceLogps(self.total[n:], self.tokens[n:]),
        )


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(N, T-1) log p(input_ids[:, t+1] | ...) from (N, T, V) logits, in fp32.

    ``logit[label] - logsumexp(logits)`` gathers first, so the (N, T, V) log-softmax is
    never materialized beside the logits.
    """
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:].unsqueeze(-1)
    return logits.gather(-1, labels).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: nn.Module, batch: SequenceBatch) -> SequenceLogps:
    """One forward pass over the batch; the completion log-prob of every row.

    As the SFT loss does (:mod:`tunesmith.loss.causal_lm`), the vocabulary projection runs
    only at positions whose next token is a completion token, and its log-softmax is taken in
    row chunks: the (N, T, V) logits of a pair batch, and their fp32 copy, were most of a
    DPO step's peak memory. A frozen half-precision head on CPU, with grad enabled, forms
    its gradient in the forward (:mod:`tunesmith.loss.head_ce`). Models the fast
    path does not fit take the full forward. Where the CPU fast paths pack passes
    (:func:`~tunesmith.data.packing.packed_scoring`), the batch runs as one packed row, each
    prompt stored once for its completions (:mod:`~tunesmith.objectives.packed_rows`), and the
    head as they run it.
    """
    mask = batch.completion_mask[:, 1:]
    lm = causal_lm_module(model)
    if lm is None:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        per_token = token_logps(out.logits, batch.input_ids)  # (N, T-1)
        weights = mask.to(per_token.dtype)
        return SequenceLogps(total=(per_token * weights).sum(-1), tokens=weights.sum(-1))
    keep = mask.bool()
    token_nll = packed_scoring(model)
    if token_nll is not None:
        packed = pack_sequences(batch)
        attn = attention_inputs(model, packed.attention_mask, packed.position_ids)
        attn.setdefault("use_cache", False)
        hidden = lm.model(input_ids=packed.input_ids, **attn).last_hidden_state[0]  # (T, C)
        h, targets, rows = hidden[packed.positions], packed.targets, packed.owners
    else:
        hidden = lm.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state  # (N, T, C)
        h, targets = hidden[:, :-1][keep], batch.input_ids[:, 1:][keep]
        rows = keep.nonzero()[:, 0]
        token_nll = head_token_nll
    logps = -token_nll(lm.lm_head, h, targets)
    total = torch.zeros(keep.shape[0], dtype=logps.dtype, device=logps.device)
    return SequenceLogps(total=total.index_add(0, rows, logps), tokens=keep.sum(-1).to(logps.dtype))
