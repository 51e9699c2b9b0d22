"""Quality filters: repetitive answers and record length (characters or tokens)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunesmith.data.normalize import words
from tunesmith.data.records import Conversation

_MIN_NGRAMS = 4  # too few n-grams say nothing about repetition


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the word n-grams in ``text`` that repeat an earlier one (0 = none, ~1 = a loop).

    A simplified form of the duplicate n-gram filters of Gopher's MassiveText (Rae et al.,
    2021, "Scaling Language Models", appendix A.1.1): an answer that says the same phrase over
    and over teaches the model to loop ("a broken record").
    """
    toks = words(text)
    grams = list(zip(*(toks[i:] for i in range(n)), strict=False))
    if len(grams) < _MIN_NGRAMS:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def answer_repetition(conv: Conversation, n: int = 3) -> float:
    """The highest :func:`repeated_ngram_share` over the conversation's assistant turns."""
    return max(
        (repeated_ngram_share(t.content, n) for t in conv.turns if t.role == "assistant"),
        default=0.0,
    )


def char_length(conv: Conversation) -> int:
    """Characters over all turns."""
    return sum(len(t.content) for t in conv.turns)


def token_length(conv: Conversation, tokenizer: Any) -> int:
    """Tokens the model will see: the chat template's rendering when the tokenizer has one,
    otherwise the turns' text joined by newlines."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(conv.to_messages(), tokenize=True)
        if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return len(ids)
    text = "\n".join(t.content for t in conv.turns)
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])
