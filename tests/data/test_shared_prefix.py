"""Rows that store the examples' common prompt prefix once: same loss, same gradients."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.data.dataset import collate, tokenize_conversations
from tunesmith.data.packing import block_causal, pack_row, segment_ids, shares_prefix
from tunesmith.data.records import Conversation
from tunesmith.data.render import IGNORE_INDEX, Rendered
from tunesmith.data.shared_prefix import pack_shared_row, shareable_prefix
from tunesmith.loss import loss_sum
from tunesmith.train.fastpath import apply_fast_paths

I = IGNORE_INDEX  # noqa: E741

QUESTIONS = [
    ("How many patients?", "SELECT COUNT(*) FROM patients;"),
    ("List doctors", "SELECT name FROM doctors ORDER BY name;"),
    ("Which doctor has the most visits?", "SELECT doctor_id FROM visits GROUP BY doctor_id;"),
    ("Patients in Lyon", "SELECT name FROM patients WHERE city = 'Lyon';"),
]


def _chat_examples(tok, system="You are a helpful assistant."):
    convs = [
        Conversation.from_messages(
            [
                {"role": "system", "content": system},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        )
        for q, a in QUESTIONS
    ]
    return tokenize_conversations(tok, convs, seq_len=128)


def test_the_prefix_is_common_and_stops_before_the_first_trained_label():
    a = Rendered([1, 2, 3, 4, 5, 6], [I, I, I, I, 5, 6])
    b = Rendered([1, 2, 3, 4, 9, 9, 9], [I, I, I, I, I, 9, 9])
    # Tokens 1-4 are common, but a's label at index 4 is trained: the prefix and the token
    # after it must carry none, so 3 tokens are shared.
    assert shareable_prefix([a, b]) == 3
    assert shareable_prefix([b, Rendered([1, 2, 7, 8], [I, I, I, 8])]) == 2  # stops at a difference
    assert shareable_prefix([a]) == 0  # one example shares with no one
    assert shareable_prefix([a, Rendered([1, 2, 3], [1, 2, 3])]) == 0  # trained from the start
    # An untrained example keeps at least its last token of its own.
    assert shareable_prefix([Rendered([1, 2], [I, I]), Rendered([1, 2, 3], [I, I, I])]) == 1


def test_a_shared_row_stores_the_prefix_once():
    a = Rendered([1, 2, 3, 4, 5], [I, I, I, I, 5])
    b = Rendered([1, 2, 3, 7, 8, 9], [I, I, I, I, 8, 9])
    row = pack_shared_row([a, b])
    assert row.input_ids == [1, 2, 3, 4, 5, 7, 8, 9]
    assert row.labels == [I, I, I, I, 5, I, 8, 9]
    assert row.position_ids == [0, 1, 2, 3, 4, 3, 4, 5]
    assert row.lengths == (5, 3)
    batch = collate([row], pad_id=0, length=10)
    assert batch.num_examples == 2 and batch.num_trained == 3
    assert shares_prefix(batch.position_ids)
    assert segment_ids(batch.position_ids).tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 2, 2]]
    # Nothing to share: the plain packed row.
    c = Rendered([5, 6], [I, 6])
    assert pack_shared_row([a, c]) == pack_row([a, c])
    assert not shares_prefix(collate([pack_row([a, c])], 0).position_ids)


def test_the_mask_lets_a_continuing_example_see_the_shared_prefix_only():
    # Prefix of 2 (row tokens 0-1), example 1 = tokens 0-3, example 2 = tokens 4-5 at
    # positions 2-3, then a padding segment restarting at 0.
    pos = torch.tensor([[0, 1, 2, 3, 2, 3, 0, 1]])
    allowed = block_causal(pos)[0]
    for q in range(8):
        for k in range(8):
            if q < 4:  # the first segment: plain causal
                want = k <= q
            elif q < 6:  # the continuing example: the prefix, then itself causally
                want = k < 2 or 4 <= k <= q
            else:  # padding shares nothing
                want = 6 <= k <= q
            assert bool(allowed[q, k]) == want, (q, k)


@pytest.mark.parametrize(("attn", "fast"), [("eager", False), ("sdpa", False), ("eager", True)])
def test_the_shared_row_trains_exactly_like_the_unshared_row(attn, fast):
    """Loss and LoRA-free gradients of every weight agree with the row that repeats the prefix;
    a leak (an example seeing another's tokens) or a wrong position moves the loss by far more."""
    tok = make_tokenizer()
    examples = _chat_examples(tok)
    shared = shareable_prefix(examples)
    assert shared > 5
    model = make_tiny_model("llama", vocab_size=len(tok), attn_implementation=attn)
    handle = apply_fast_paths(model, torch.device("cpu")) if fast else None
    if fast:
        assert handle.installed["attention"] == 1  # the grouped, per-example attention
    results = []
    for row in (pack_row(examples), pack_shared_row(examples)):
        batch = collate([row], tok.pad_token_id, length=len(row.input_ids) + 7)
        model.zero_grad()
        loss = loss_sum(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((batch, loss.detach(), grads))
    (full, ref_loss, ref_grads), (row, loss, grads) = results
    assert row.num_tokens == full.num_tokens - (len(examples) - 1) * shared
    assert row.num_trained == full.num_trained and row.num_examples == len(examples)
    if fast:  # the packed layout ran, with the prefix copied to the continuing examples
        assert handle.caches.layouts.layout.shared_rows is not None
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6, msg=name)


def test_a_different_system_prompt_is_not_shared():
    tok = make_tokenizer()
    one = _chat_examples(tok)[:2]
    other = _chat_examples(tok, system="Answer in SQL.")[2:]
    # Only the chat template's opening ("<|im_start|>system\n") is common.
    assert 0 < shareable_prefix(one + other) < shareable_prefix(one)
