"""Quality filters: repetitive answers and record length (characters or tokens)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tunesmith.data.records import Conversation

_MIN_NGRAMS = 4  # too few n-grams say nothing about repetition


def repeated_ngram_share(ngram_hashes: np.ndarray) -> float:
    """Share of the n-grams of a text that repeat an earlier one (0 = none, ~1 = a loop).

    Args:
        ngram_hashes: One hash per n-gram position, e.g. from
            :meth:`tunesmith.data.dedup.NgramHasher.ngrams`.

    A simplified form of the duplicate n-gram filters of Gopher's MassiveText (Rae et al.,
    2021, "Scaling Language Models", appendix A): an answer that says the same phrase over and
    over teaches the model to loop ("a broken record").
    """
    if len(ngram_hashes) < _MIN_NGRAMS:
        return 0.0
    return 1.0 - len(np.unique(ngram_hashes)) / len(ngram_hashes)


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
