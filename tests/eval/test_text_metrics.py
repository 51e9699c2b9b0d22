"""Text metrics against values worked out by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from rouge_score import rouge_scorer

from tunesmith.eval.text_metrics import (
    exact_match,
    hit_length_limit_share,
    repeated_ngram_rate,
    repeated_ngram_share,
    rouge_l,
    text_scores,
    word_tokens,
)


def test_rouge_l_hand_computed():
    # "the cat sat" in "the cat sat on the mat": LCS 3, P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3.
    # "a b c d" vs "a c e": LCS "a c" = 2, P = 2/4, R = 2/3, F = 4/7.
    preds = ["the cat sat", "a b c d"]
    refs = ["the cat sat on the mat", "a c e"]
    assert rouge_l(preds[:1], refs[:1]) == pytest.approx(2 / 3)
    assert rouge_l(preds, refs) == pytest.approx((2 / 3 + 4 / 7) / 2)


def test_rouge_l_matches_rouge_score_on_ascii():
    preds = ["Patients in Lyon: 3.", "SELECT name FROM doctors;", "no idea"]
    refs = ["There are 3 patients in Lyon", "SELECT name FROM doctors ORDER BY name;", "x y"]
    reference = rouge_scorer.RougeScorer(["rougeL"])
    expected = (
        sum(reference.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)) / 3
    )
    assert rouge_l(preds, refs) == pytest.approx(expected)
    assert rouge_l(["The Cat."], ["the cat"]) == 1.0


def test_rouge_l_keeps_cjk():
    # rouge-score's default tokenizer drops every non-ASCII character: all CJK text scores 0.
    default = rouge_scorer.RougeScorer(["rougeL"]).score("我爱上海", "我爱北京")
    assert default["rougeL"].fmeasure == 0
    # Per character: LCS of 我爱北京 / 我爱上海 is 我爱 = 2 of 4 each way, F = 0.5.
    assert rouge_l(["我爱北京"], ["我爱上海"]) == pytest.approx(0.5)
    assert word_tokens("Hello, World_42! 你好 Привет") == [
        "hello",
        "world",
        "42",
        "你",
        "好",
        "привет",
    ]


def test_rouge_l_empty_prediction_scores_zero():
    assert rouge_l(["", "a b"], ["a b", "a b"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        rouge_l(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge_l([], [])


def test_exact_match_normalizes():
    preds = ["  Hello \n  World ", "Straße", "", "", "42"]
    refs = ["hello world", "STRASSE", "", "x", "42.0"]
    # hits: whitespace/case, casefold ß -> ss, empty == empty; misses: "" vs "x", 42 vs 42.0
    assert exact_match(preds, refs) == pytest.approx(3 / 5)


@dataclass
class _Gen:
    num_new_tokens: int
    ended_with_eos: bool


def test_hit_length_limit_share():
    # Only (10, False) is cut off: (10, True) ended on the last allowed token.
    pairs = [(10, False), (10, True), (3, True), (3, False)]
    assert hit_length_limit_share(pairs, 10) == 0.25
    assert hit_length_limit_share([_Gen(*p) for p in pairs], 10) == 0.25
    assert hit_length_limit_share([_Gen(12, False), _Gen(5, False)], 10) == 0.5
    assert hit_length_limit_share([], 10) == 0.0
    with pytest.raises(ValueError):
        hit_length_limit_share(pairs, 0)


def test_repeated_ngram_rate_hand_computed():
    # bigrams of "a b a b a b": ab ba ab ba ab -> 5 total, 2 unique -> 1 - 2/5 = 0.6
    assert repeated_ngram_share("a b a b a b", n=2) == pytest.approx(0.6)
    assert repeated_ngram_share("x y z", n=2) == 0.0
    assert repeated_ngram_share("short", n=2) is None
    # the short text is left out of the mean: (0.6 + 0) / 2
    assert repeated_ngram_rate(["a b a b a b", "x y z", "short"], n=2) == pytest.approx(0.3)
    # six equal words: 3 four-grams, 1 unique -> 2/3; CJK counts per character.
    assert repeated_ngram_rate(["the the the the the the"]) == pytest.approx(2 / 3)
    assert repeated_ngram_share("哈哈哈哈", n=2) == pytest.approx(2 / 3)
    assert repeated_ngram_rate(["", "a"]) == 0.0


def test_text_scores_names_and_values():
    scores = text_scores(
        ["the cat sat", "yes"],
        ["the cat sat on the mat", "Yes"],
        generations=[(8, False), (1, True)],
        max_new_tokens=8,
    )
    assert scores == {
        "rouge_l": pytest.approx((2 / 3 + 1) / 2),
        "exact_match": 0.5,
        "repeated_4gram_rate": 0.0,
        "hit_length_limit": 0.5,
    }
    assert "hit_length_limit" not in text_scores(["a"], ["a"])
