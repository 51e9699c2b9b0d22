"""The per-record half of cleaning: everything that needs no knowledge of other records.

:class:`Preparer` normalizes and validates a conversation, applies the length and repetition
filters, and computes its exact-duplicate key, shingle set and MinHash signature. It holds no
state that decisions depend on, so it can run in worker processes
(:mod:`tunesmith.data.parallel`) while the decisions (:class:`tunesmith.data.clean.Cleaner`)
stay in one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.data.dedup import MinHasher, NgramHasher
from tunesmith.data.filters import char_length, repeated_ngram_share, token_length
from tunesmith.data.normalize import exact_key, normalize_conversation, words
from tunesmith.data.options import CleanOptions
from tunesmith.data.records import Conversation
from tunesmith.data.validate import check_conversation


@dataclass(frozen=True)
class Prepared:
    """One record after :class:`Preparer`.

    Attributes:
        conv: The normalized conversation.
        problem: ``(kind, reason)`` when it is invalid (then nothing else is set).
        drop: ``"too_short"``, ``"too_long"`` or ``"repetitive"`` when a filter drops it.
        digest: Exact-duplicate key (:func:`~tunesmith.data.normalize.exact_key`).
        shingles: Sorted distinct shingle hashes of the user and assistant turns, ``(S,)``.
        signature: MinHash signature of ``shingles``, ``(num_perm,)`` uint32.
    """

    conv: Conversation
    problem: tuple[str, str] | None = None
    drop: str | None = None
    digest: bytes = b""
    shingles: np.ndarray | None = None
    signature: np.ndarray | None = None


class Preparer:
    """Callable ``Conversation -> Prepared`` configured by :class:`CleanOptions`.

    Args:
        options: The cleaning options.
        tokenizer: When given, ``min_tokens``/``max_tokens`` count chat-template tokens.
    """

    def __init__(self, options: CleanOptions, tokenizer: Any = None):
        self.options, self.tokenizer = options, tokenizer
        self.ngrams = NgramHasher()
        self.hasher = MinHasher(options.num_perm)

    def __call__(self, record: Conversation) -> Prepared:
        conv = normalize_conversation(record)
        if problem := check_conversation(conv):
            return Prepared(conv, problem=problem)
        if reason := self._length_filter(conv):
            return Prepared(conv, drop=reason)
        o = self.options
        # Each turn's words are hashed once, for the repetition filter and for the shingles.
        # System turns are left out of the shingles: one system prompt shared by every record
        # would make records with nothing else in common look alike (they still count for
        # exact duplicates).
        ids = [
            (t.role, self.ngrams.ids(words(t.content))) for t in conv.turns if t.role != "system"
        ]
        repeat = max(
            repeated_ngram_share(self.ngrams.ngrams(i, o.repeat_ngram))
            for r, i in ids
            if r == "assistant"
        )
        if repeat > o.max_repeat_ratio:
            return Prepared(conv, drop="repetitive")
        shingles = np.unique(self.ngrams.ngrams(np.concatenate([i for _, i in ids]), o.shingle))
        if not len(shingles):  # a record of punctuation only: one empty-text shingle
            shingles = np.zeros(1, np.uint32)
        return Prepared(
            conv,
            digest=exact_key(conv),
            shingles=shingles,
            signature=self.hasher.signature(shingles),
        )

    def _length_filter(self, conv: Conversation) -> str | None:
        o = self.options
        n = char_length(conv)
        if n < o.min_chars:
            return "too_short"
        if o.max_chars is not None and n > o.max_chars:
            return "too_long"
        if self.tokenizer is not None and (o.min_tokens is not None or o.max_tokens is not None):
            n_tok = token_length(conv, self.tokenizer)
            if o.min_tokens is not None and n_tok < o.min_tokens:
                return "too_short"
            if o.max_tokens is not None and n_tok > o.max_tokens:
                return "too_long"
        return None
