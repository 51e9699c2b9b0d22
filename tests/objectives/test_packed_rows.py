"""Preference batches as one packed row: each prompt stored once, the padded rows' log-probs."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.data.packing import block_causal, packed_scoring, segments
from tunesmith.objectives import (
    PairIds,
    UnpairedIds,
    collate_pairs,
    collate_unpaired,
    sequence_logps,
)
from tunesmith.objectives.packed_rows import pack_sequences
from tunesmith.train.fastpath import apply_fast_paths


def test_a_pair_shares_its_prompt_and_scores_each_completion_token_once():
    batch = collate_pairs(
        [PairIds([1, 2, 3], [4, 5], [6]), PairIds([7, 8], [9], [10, 11, 12])], pad_id=0
    )
    packed = pack_sequences(batch, bucket=8)
    # chosen 0, then rejected 0 from the prompt's last token; chosen 1, rejected 1; padding.
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 3, 6, 7, 8, 9, 8, 10, 11, 12, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 0, 1, 2, 1, 2, 3, 4, 0, 1]]
    assert packed.attention_mask.tolist() == [[1] * 14 + [0, 0]]
    # Every completion token once, scored from the position before it, in its row's order.
    assert packed.positions.tolist() == [2, 3, 5, 8, 10, 11, 12]
    assert packed.targets.tolist() == [4, 5, 6, 9, 10, 11, 12]
    assert packed.owners.tolist() == [0, 0, 2, 1, 3, 3, 3]
    seg = segments(packed.position_ids)
    assert seg.shared[0].tolist() == [0] * 5 + [2, 2] + [0] * 3 + [1] * 4 + [0, 0]
    allowed = block_causal(packed.position_ids)[0]
    # The rejected completions see their own prompt, never the other pair's tokens.
    assert allowed[6].nonzero().flatten().tolist() == [0, 1, 5, 6]
    assert allowed[13].nonzero().flatten().tolist() == [7, 10, 11, 12, 13]


def test_rows_with_different_prompts_share_nothing():
    examples = [UnpairedIds([1, 2], [3, 4], True), UnpairedIds([5, 6, 7], [8], False)]
    batch = collate_unpaired(examples, pad_id=0)
    for rows in (batch.rows, batch.kl_rows):
        packed = pack_sequences(rows, bucket=1)
        assert not bool(segments(packed.position_ids).shared.any())
        assert packed.attention_mask.all()  # bucket 1: no padding
        n = rows.attention_mask.sum().item()
        assert packed.input_ids.shape[1] == n
    # The padding never exceeds the padded batch's tokens.
    wide = pack_sequences(batch.rows, bucket=1024)
    assert wide.input_ids.numel() == batch.rows.input_ids.numel()


def _pairs(tok):
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    questions = [
        ("How many patients live in Lyon?", " SELECT COUNT(*) FROM patients;", " SELECT 1;"),
        ("List doctors", " SELECT name FROM doctors;", " SELECT name FROM patients ORDER BY name;"),
        ("Which doctor has the most visits?", " SELECT doctor_id FROM visits;", " 42"),
    ]
    return [
        PairIds(
            tok(system + q + "<|im_end|>\n<|im_start|>assistant\n").input_ids,
            tok(c + "<|im_end|>").input_ids,
            tok(r + "<|im_end|>").input_ids,
        )
        for q, c, r in questions
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_log_probs_and_gradients_equal_the_padded_rows(dtype):
    """With the fast paths installed the batch runs as one packed row; log-probs and every
    weight's gradient agree with the padded rows' (a leak across examples or a wrong position
    moves them by far more)."""
    tok = make_tokenizer()
    model = make_tiny_model(vocab_size=len(tok), attn_implementation="eager").to(dtype)
    batch = collate_pairs(_pairs(tok), pad_id=tok.pad_token_id)
    results = []
    for fast in (False, True):
        handle = apply_fast_paths(model, torch.device("cpu")) if fast else None
        assert (packed_scoring(model) is not None) == fast
        model.zero_grad()
        got = sequence_logps(model, batch)
        (got.total * torch.linspace(1.0, 2.0, got.total.shape[0])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if fast:  # the packed layout ran, each rejected side continuing its prompt
            assert handle.caches.layouts.layout.shared_rows is not None
            handle.undo()
            assert packed_scoring(model) is None
        results.append((got, grads))
    (want, want_grads), (got, grads) = results
    assert torch.equal(got.tokens, want.tokens)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=0, atol=0.02)
    torch.testing.assert_close(got.total, want.total, **tol)
    assert grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        scale = g.abs().max().item() + 1e-12
        err = (grads[name].float() - g.float()).abs().max().item() / scale
        assert err < (1e-5 if dtype == torch.float32 else 3e-2), (name, err)  # bf16: 0.009


def test_packed_log_probs_without_gradients():
    """The reference side (adapter off, no gradient) takes the packed row too."""
    tok = make_tokenizer()
    model = make_tiny_model(vocab_size=len(tok), attn_implementation="eager")
    batch = collate_pairs(_pairs(tok), pad_id=tok.pad_token_id)
    with torch.no_grad():
        want = sequence_logps(model, batch).total
        handle = apply_fast_paths(model, torch.device("cpu"))
        got = sequence_logps(model, batch).total
        handle.undo()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_the_scored_indices_are_contiguous():
    """The head's kernels take the targets as one contiguous int64 tensor."""
    packed = pack_sequences(collate_pairs([PairIds([1, 2], [3], [4, 5])], pad_id=0))
    assert all(t.is_contiguous() for t in (packed.positions, packed.targets, packed.owners))
