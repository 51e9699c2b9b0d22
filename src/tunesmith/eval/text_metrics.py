"""Text metrics for free-form answers: ROUGE-L, exact match and degeneration checks.

All functions are pure and take plain lists of strings, so the eval harness, ``compare`` and
notebooks share one definition of each score. Scores are means over examples in ``[0, 1]``.

Degeneration is measured two ways, because a fine-tuned model that forgot how to stop shows
up in either: the share of generations that ran into ``max_new_tokens`` without emitting the
end-of-turn token, and the repeated n-gram rate ("rep-n" of Welleck et al., 2019, *Neural Text
Generation with Unlikelihood Training*, https://arxiv.org/abs/1908.04319).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from rouge_score import rouge_scorer, tokenizers

# Scripts written without spaces between words: each character is one token, the usual
# practice for character-level ROUGE on Chinese/Japanese. Everything else is split into runs
# of letters and digits, which on ASCII text equals rouge-score's own tokenizer ([a-z0-9]+).
_CJK = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf"  # CJK Unified Ideographs Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\U00020000-\U0002ffff"  # CJK Extensions B-F
)
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_SPACE_RE = re.compile(r"\s+")


def word_tokens(text: str) -> list[str]:
    """Casefolded word tokens that keep every script: CJK characters singly, other words whole.

    rouge-score's default tokenizer replaces every non ``[a-z0-9]`` character with a space, so
    a Chinese or Russian answer has no tokens at all and scores 0 against anything. This one
    gives identical tokens on ASCII text and sensible ones elsewhere.

    >>> word_tokens("Hello, World_42! 你好吗")
    ['hello', 'world', '42', '你', '好', '吗']
    """
    return _TOKEN_RE.findall(text.casefold())


class UnicodeTokenizer(tokenizers.Tokenizer):
    """A rouge-score tokenizer over :func:`word_tokens` (no stemming)."""

    def tokenize(self, text: str) -> list[str]:
        return word_tokens(text)


def _check_pairs(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no predictions to score")


def rouge_l(
    preds: Sequence[str], refs: Sequence[str], tokenizer: tokenizers.Tokenizer | None = None
) -> float:
    """Mean ROUGE-L F-measure (Lin, 2004) of each prediction against its reference.

    Computed with Google's maintained ``rouge-score`` package; only the tokenizer is ours (see
    :func:`word_tokens`). An empty prediction or reference scores 0, as in rouge-score.

    Args:
        preds: Model outputs, one per example.
        refs: Reference answers, same length as ``preds``.
        tokenizer: A ``rouge_score.tokenizers.Tokenizer``; defaults to :class:`UnicodeTokenizer`.

    Returns:
        The mean F-measure in ``[0, 1]``.
    """
    _check_pairs(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer or UnicodeTokenizer())
    total = sum(
        scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(preds, refs, strict=True)
    )
    return total / len(preds)


def normalize_answer(text: str) -> str:
    """Strip, collapse runs of whitespace to one space, casefold."""
    return _SPACE_RE.sub(" ", text.strip()).casefold()


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalize_answer`."""
    _check_pairs(preds, refs)
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(preds, refs, strict=True))
    return hits / len(preds)


@runtime_checkable
class GenerationLike(Protocol):
    """What the degeneration check needs from a generation record."""

    num_new_tokens: int
    ended_with_eos: bool


def hit_length_limit_share(
    generations: Iterable[GenerationLike | tuple[int, bool]], max_new_tokens: int
) -> float:
    """Share of generations that used all ``max_new_tokens`` without ending the turn.

    Such a generation was cut off rather than finished: the model rambled or looped. One that
    ended with the end-of-turn token on exactly the last allowed step did finish, so it is not
    counted.

    Args:
        generations: Records with ``num_new_tokens`` and ``ended_with_eos`` attributes, or
            ``(num_new_tokens, ended_with_eos)`` pairs.
        max_new_tokens: The generation limit that was in force.

    Returns:
        The share in ``[0, 1]``; 0.0 for no generations.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    hits = count = 0
    for gen in generations:
        if isinstance(gen, GenerationLike):
            num_new, ended = gen.num_new_tokens, gen.ended_with_eos
        else:
            num_new, ended = gen
        count += 1
        hits += num_new >= max_new_tokens and not ended
    return hits / count if count else 0.0


def repeated_ngram_share(text: str, n: int = 4) -> float | None:
    """Share of ``text``'s word n-grams that repeat an earlier n-gram in the same text.

    ``1 - unique / total`` ("rep-n", Welleck et al., 2019). ``None`` when the text has fewer
    than ``n`` tokens, so it has no n-grams to judge.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = word_tokens(text)
    total = len(tokens) - n + 1
    if total < 1:
        return None
    unique = len({tuple(tokens[i : i + n]) for i in range(total)})
    return 1.0 - unique / total


def repeated_ngram_rate(texts: Iterable[str], n: int = 4) -> float:
    """Mean of :func:`repeated_ngram_share` over the texts that have at least one n-gram.

    Texts shorter than ``n`` tokens are left out of the mean rather than counted as 0, so a
    set of short answers does not dilute the repetition of the long ones. 0.0 when no text has
    an n-gram.
    """
    shares = [s for s in (repeated_ngram_share(t, n) for t in texts) if s is not None]
    return sum(shares) / len(shares) if shares else 0.0


def text_scores(
    preds: Sequence[str],
    refs: Sequence[str],
    *,
    generations: Iterable[GenerationLike | tuple[int, bool]] | None = None,
    max_new_tokens: int | None = None,
    n: int = 4,
) -> dict[str, float]:
    """All free-text scores in one dict, with the names ``eval.json`` uses.

    Args:
        preds: Model outputs, one per example.
        refs: Reference answers.
        generations: Optional generation records (see :func:`hit_length_limit_share`); with
            ``max_new_tokens`` they add ``hit_length_limit``.
        max_new_tokens: The generation limit in force.
        n: The n of the repeated n-gram rate.

    Returns:
        ``{"rouge_l", "exact_match", f"repeated_{n}gram_rate"[, "hit_length_limit"]}``.
    """
    scores = {
        "rouge_l": rouge_l(preds, refs),
        "exact_match": exact_match(preds, refs),
        f"repeated_{n}gram_rate": repeated_ngram_rate(preds, n),
    }
    if generations is not None and max_new_tokens is not None:
        scores["hit_length_limit"] = hit_length_limit_share(generations, max_new_tokens)
    return scores
