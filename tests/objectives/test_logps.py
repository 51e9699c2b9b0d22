"""sequence_logps: the head-at-completion-positions path equals the full forward's log-probs."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.objectives import PairIds, collate_pairs, sequence_logps
from tunesmith.objectives.logps import token_logps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_equals_the_full_forward(dtype):
    tok = make_tokenizer()
    torch.manual_seed(0)
    model = make_tiny_model(vocab_size=len(tok)).to(dtype)
    pairs = [
        PairIds(
            tok("Which city?").input_ids, tok(" Lyon").input_ids, tok(" Paris is it").input_ids
        ),
        PairIds(tok("Count them").input_ids, tok(" 3 rows").input_ids, tok(" 4").input_ids),
    ]
    batch = collate_pairs(pairs, pad_id=tok.pad_token_id)
    got = sequence_logps(model, batch)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.completion_mask[:, 1:].float()
    want = (token_logps(logits, batch.input_ids) * mask).sum(-1)
    assert torch.equal(got.tokens, mask.sum(-1))
    torch.testing.assert_close(got.total, want, rtol=1e-5, atol=1e-4)
    got.total.sum().backward()  # differentiable through the selected rows
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
