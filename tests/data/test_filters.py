"""Repetition share and length measures, pinned by hand-counted examples."""

from __future__ import annotations

import random

import pytest

from tests.tiny import make_tokenizer
from tunesmith.data.dedup import NgramHasher
from tunesmith.data.filters import char_length, repeated_ngram_share, token_length
from tunesmith.data.normalize import words
from tunesmith.data.records import Conversation, Turn


def _share(text: str, n: int = 3) -> float:
    ng = NgramHasher()
    return repeated_ngram_share(ng.ngrams(ng.ids(words(text)), n))


def _reference(text: str, n: int = 3) -> float:
    toks = words(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return 0.0 if len(grams) < 4 else 1 - len(set(grams)) / len(grams)


def test_repeated_ngram_share_by_hand():
    # trigrams: abc bca cab abc bca cab abc -> 7, 3 distinct
    assert _share("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert _share("one two three four five six") == 0.0
    assert _share("no no no") == 0.0  # too short to judge
    assert _share("no " * 50) == pytest.approx(1 - 1 / 48)
    assert _share("a b a b a b", n=2) == pytest.approx(1 - 2 / 5)


def test_repeated_ngram_share_matches_tuple_reference():
    rng = random.Random(0)
    for _ in range(50):
        text = " ".join(rng.choice("abcdefgh") for _ in range(rng.randint(0, 60)))
        assert _share(text) == pytest.approx(_reference(text))


def test_lengths():
    conv = Conversation((Turn("user", "How many patients?"), Turn("assistant", "SELECT 1;")))
    assert char_length(conv) == 18 + 9
    tok = make_tokenizer()
    ids = tok.apply_chat_template(conv.to_messages(), tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert token_length(conv, tok) == len(ids) > 10
    tok.chat_template = None
    plain = len(tok("How many patients?\nSELECT 1;")["input_ids"])
    assert token_length(conv, tok) == plain
