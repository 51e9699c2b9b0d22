"""Repetition share and length measures, pinned by hand-counted examples."""

from __future__ import annotations

import pytest

from tests.tiny import make_tokenizer
from tunesmith.data.filters import (
    answer_repetition,
    char_length,
    repeated_ngram_share,
    token_length,
)
from tunesmith.data.records import Conversation, Turn


def test_repeated_ngram_share_by_hand():
    # trigrams: abc bca cab abc bca cab abc -> 7, 3 distinct
    assert repeated_ngram_share("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repeated_ngram_share("one two three four five six") == 0.0
    assert repeated_ngram_share("no no no") == 0.0  # too short to judge
    assert repeated_ngram_share("no " * 50) == pytest.approx(1 - 1 / 48)


def test_answer_repetition_ignores_prompt():
    conv = Conversation(
        (Turn("user", "x y z " * 10), Turn("assistant", "a fine unique answer here"))
    )
    assert answer_repetition(conv) == 0.0


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
