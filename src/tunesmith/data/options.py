"""The cleaner's options: one typed, validated place for every knob and its default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tunesmith.data.validate import OnError
from tunesmith.errors import ConfigError


@dataclass(frozen=True)
class CleanOptions:
    """Every knob of the cleaner, with its default; :func:`clean` takes them as keywords.

    Attributes:
        eval_share: Share of records routed to eval by a hash of their normalized text
            (deterministic for a given ``seed``; exact duplicates land on the same side).
        near_dup_threshold: Estimated Jaccard similarity of word-shingle sets at or above which
            two records are near duplicates.
        num_perm: MinHash permutations (signature length).
        shingle: Words per shingle.
        max_repeat_ratio: Drop records whose answer has a larger share of repeated
            ``repeat_ngram``-word n-grams.
        repeat_ngram: n of the repetition filter.
        min_chars: Drop conversations with fewer characters (all turns).
        max_chars: Drop conversations with more characters; None for no limit.
        min_tokens: With a tokenizer: drop conversations with fewer tokens.
        max_tokens: With a tokenizer: drop conversations with more tokens (e.g. the seq-len).
        seed: Seed of the eval split.
        on_error: ``skip`` bad records (reported) or ``fail`` at the first.
        max_invalid_share: Fail anyway when more than this share of records is invalid.
        examples_per_reason: Examples kept in the report for each drop reason.
        answer_repeat_min: Report answers that occur at least this many times in train.
        dedup_window: Remember only the last N kept records of each side for exact and near
            duplicates and leaks, so memory is bounded on a streamed input of any length;
            None remembers every record.
        workers: Extra processes for the per-record work (normalize, filter, hash); 0 does
            it in-process. Decisions stay in one process, so results do not depend on it.
            Worth it for large inputs only (each worker takes about a second to start).
    """

    eval_share: float = 0.0
    near_dup_threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    max_repeat_ratio: float = 0.5
    repeat_ngram: int = 3
    min_chars: int = 1
    max_chars: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    seed: int = 0
    on_error: OnError = "skip"
    max_invalid_share: float = 0.2
    examples_per_reason: int = 3
    answer_repeat_min: int = 3
    dedup_window: int | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_share < 1.0:
            raise ConfigError("eval_share", self.eval_share, "a share in [0, 1)")
        if not 0.0 <= self.max_repeat_ratio <= 1.0:
            raise ConfigError("max_repeat_ratio", self.max_repeat_ratio, "a share in [0, 1]")
        for name in (
            "min_chars",
            "max_chars",
            "min_tokens",
            "max_tokens",
            "repeat_ngram",
            "dedup_window",
            "workers",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(name, value, "a non-negative integer")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> CleanOptions:
        """Build from keywords; an unknown keyword is a :class:`ConfigError` naming the allowed ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in kwargs.items():
            if key not in names:
                raise ConfigError(key, value, "one of " + ", ".join(sorted(names)))
        return cls(**kwargs)
