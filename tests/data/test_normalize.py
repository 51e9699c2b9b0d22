"""Normalization keeps meaning and layout that matters, and makes layout-only variants equal."""

from __future__ import annotations

from tunesmith.data.normalize import (
    comparable,
    exact_key,
    normalize_conversation,
    normalize_text,
    words,
)
from tunesmith.data.records import Conversation, Turn


def test_normalize_text():
    assert normalize_text("Ｓｅｌｅｃｔ\u00a0ｆｉ") == "Select fi"  # full-width, NBSP, ligature
    assert normalize_text("a\u200bb\ufeff") == "ab"
    assert normalize_text("  x  \r\ny\t\r\n\n\n\nz  ") == "x\ny\n\nz"
    code = "def f():\n    return 1"
    assert normalize_text(code) == code  # indentation kept


def test_exact_key_ignores_case_and_layout_only():
    a = Conversation((Turn("user", "How  many\npatients?"), Turn("assistant", "SELECT 1")))
    b = Conversation((Turn("user", "how many patients?"), Turn("assistant", "select 1")))
    c = Conversation((Turn("system", "how many patients?"), Turn("assistant", "select 1")))
    d = Conversation((Turn("user", "how many patients"), Turn("assistant", "select 1")))
    assert exact_key(a) == exact_key(b)
    assert exact_key(a) != exact_key(c)  # roles count
    assert exact_key(a) != exact_key(d)  # punctuation counts for exact duplicates


def test_normalize_conversation_keeps_source_and_meta():
    conv = Conversation((Turn("user", " q "), Turn("assistant", "a\u200b")), "f:3", {"k": 1})
    out = normalize_conversation(conv)
    assert out.turns == (Turn("user", "q"), Turn("assistant", "a"))
    assert (out.source, out.meta) == ("f:3", {"k": 1})


def test_words_and_comparable():
    assert words("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert comparable(" A\tB \n") == "a b"
