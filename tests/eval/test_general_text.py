"""The shipped general-text set and perplexity against a float64 recomputation by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.errors import UserInputError
from tunesmith.eval.general_text import general_texts, perplexity


def test_general_texts_shipped_and_varied():
    texts = general_texts()
    assert 60 <= len(texts) <= 100
    assert len(set(texts)) == len(texts)
    assert all(20 <= len(t.split()) <= 80 for t in texts)
    # General text only: nothing from the demo's SQL/clinic domain.
    assert not any("SELECT" in t or "patients" in t.lower() for t in texts)


def _reference_ppl(model, tokenizer, texts, max_length):
    """Each text alone, no padding, all maths in float64."""
    ref = make_tiny_model("llama", vocab_size=len(tokenizer)).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            ids = torch.tensor([ids])
            logp = torch.log_softmax(ref(input_ids=ids).logits[0, :-1], dim=-1)  # (T-1, V)
            nll -= logp.gather(1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer()
    return make_tiny_model("llama", vocab_size=len(tokenizer)), tokenizer


def test_perplexity_matches_float64_recomputation(tiny):
    model, tokenizer = tiny
    # Lengths differ a lot (padding matters); one text is longer than max_length (truncation).
    texts = general_texts()[:5] + ["Hi there.", " ".join(general_texts()[5:8])]
    expected = _reference_ppl(model, tokenizer, texts, max_length=64)
    # A random tiny model is near-uniform over its vocabulary.
    assert 0.5 * len(tokenizer) < expected < 2 * len(tokenizer)
    for batch_size in (1, 3, 8):
        got = perplexity(model, tokenizer, texts, batch_size=batch_size, max_length=64)
        assert got == pytest.approx(expected, rel=1e-5)


def test_perplexity_restores_training_flag_and_rejects_empty(tiny):
    model, tokenizer = tiny
    model.train()
    try:
        perplexity(model, tokenizer, ["A short line of text."])
        assert model.training
    finally:
        model.eval()
    with pytest.raises(UserInputError, match="no text"):
        perplexity(model, tokenizer, ["", "a"])
