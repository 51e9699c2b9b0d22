"""The cleaning decisions that need the records seen so far: side, duplicates, leaks, report.

:class:`Cleaner` takes records one at a time, already through
:class:`~tunesmith.data.prepare.Preparer` (normalized, validated, length- and
repetition-filtered, hashed), and decides steps 5-8 of :mod:`tunesmith.data.clean`: the
train/eval side, exact and near duplicates within a side, and eval records leaked into train.
It keeps what the report needs (counts, examples, duplicate clusters, repeated answers).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tunesmith.data.dedup import NearDupIndex
from tunesmith.data.normalize import comparable, text_of
from tunesmith.data.options import CleanOptions
from tunesmith.data.prepare import Prepared, Preparer
from tunesmith.data.records import Conversation
from tunesmith.data.validate import Invalid, Tally
from tunesmith.errors import DataError

Side = Literal["train", "eval"]
DropHook = Callable[[str, str, dict[str, Any]], None]
DROP_REASONS = (
    "too_short",
    "too_long",
    "repetitive",
    "exact_duplicates",
    "near_duplicates",
    "eval_leaks",
)
_EXCERPT = 160
_TOP = 20


@dataclass(frozen=True)
class Kept:
    """A record that survived: its side, its normalized form and its key within that side."""

    side: Side
    conv: Conversation
    key: int


@dataclass
class _SideState:
    index: NearDupIndex
    exact: dict[bytes, int] = field(default_factory=dict)  # digest -> kept key
    sources: list[str] = field(default_factory=list)  # kept key -> source


class Cleaner:
    """The cleaning state machine: feed records with :meth:`add`, then call :meth:`finish`.

    Args:
        options: The knobs (:class:`CleanOptions`).
        tokenizer: When given, length filters count tokens (``min_tokens``/``max_tokens``).
        on_drop: Called as ``on_drop(reason, source, detail)`` for every dropped (not
            invalid) record, e.g. to log or to score dedup decisions in a benchmark.
    """

    def __init__(
        self,
        options: CleanOptions | None = None,
        tokenizer: Any = None,
        on_drop: DropHook | None = None,
    ):
        self.options = opts = options or CleanOptions()
        self.tokenizer = tokenizer
        self.on_drop = on_drop
        self.tally = Tally(opts.on_error, opts.max_invalid_share)
        self.prepare = Preparer(opts, tokenizer)
        self.hasher = self.prepare.hasher
        self.sides: dict[str, _SideState] = {
            side: _SideState(NearDupIndex(self.hasher, opts.near_dup_threshold))
            for side in ("train", "eval")
        }
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.leaked_eval: set[int] = set()
        self.leaks: list[dict[str, Any]] = []
        # (kind, side, kept key) -> [size, lowest similarity, a few dropped sources]
        self.clusters: dict[tuple[str, str, int], list[Any]] = {}
        self.answers: Counter[bytes] = Counter()
        self.answer_text: dict[bytes, str] = {}

    # -- feeding -------------------------------------------------------------------------
    def add(self, record: Conversation | Invalid, side: Side | None = None) -> Kept | None:
        """Process one record; return it (normalized) if it is kept, else None.

        Args:
            record: A conversation or a reader's :class:`Invalid`.
            side: ``"eval"`` for records from eval files, ``"train"`` to force train, None to
                split by ``eval_share``.
        """
        return self.add_prepared(
            record if isinstance(record, Invalid) else self.prepare(record), side
        )

    def add_prepared(self, item: Prepared | Invalid, side: Side | None = None) -> Kept | None:
        """:meth:`add` for a record already through :class:`Preparer` (possibly elsewhere)."""
        if isinstance(item, Invalid):
            self.tally.bad(item)
            return None
        conv = item.conv
        if item.problem:
            self.tally.bad(_invalid_at(conv.source, *item.problem))
            return None
        self.tally.good()
        if item.drop:
            self._drop(item.drop, conv)
            return None
        return self._dedup(conv, item, side or self._split(item.digest))

    def _split(self, digest: bytes) -> Side:
        if self.options.eval_share <= 0:
            return "train"
        h = hashlib.blake2b(digest, digest_size=8, key=str(self.options.seed).encode()).digest()
        return "eval" if int.from_bytes(h, "little") / 2**64 < self.options.eval_share else "train"

    def _dedup(self, conv: Conversation, item: Prepared, side: Side) -> Kept | None:
        digest, shingles = item.digest, item.shingles
        own = self.sides[side]
        other = self.sides["eval" if side == "train" else "train"]
        if (key := own.exact.get(digest)) is not None:
            self._cluster("exact", side, key, conv.source, 1.0)
            self._drop("exact_duplicates", conv, kept=own.sources[key])
            return None
        sketch = self.hasher.lean(item.signature)
        if match := own.index.query(sketch, shingles):
            key, sim = match
            self._cluster("near", side, key, conv.source, sim)
            self._drop("near_duplicates", conv, kept=own.sources[key], similarity=round(sim, 3))
            return None
        # Leak check against the other side: exact first, then near.
        leaks = [(k, 1.0) for k in [other.exact.get(digest)] if k is not None]
        leaks += [
            m for m in other.index.matches(sketch, shingles) if m[0] not in {k for k, _ in leaks}
        ]
        if side == "eval" and leaks:
            self._leak(conv.source, other.sources[leaks[0][0]], leaks[0][1])
            self._drop("eval_leaks", conv, kept=other.sources[leaks[0][0]])
            return None
        key = own.index.add(sketch, shingles)
        own.exact[digest] = key
        own.sources.append(conv.source)
        if side == "train":
            for eval_key, sim in leaks:
                if eval_key not in self.leaked_eval:
                    self.leaked_eval.add(eval_key)
                    self._leak(other.sources[eval_key], conv.source, sim)
                    self.counts["eval_leaks"] += 1
                    if self.on_drop:
                        self.on_drop("eval_leaks", other.sources[eval_key], {"kept": conv.source})
            self._count_answer(conv)
        return Kept(side, conv, key)

    # -- bookkeeping ---------------------------------------------------------------------
    def _drop(self, reason: str, conv: Conversation, **detail: Any) -> None:
        self.counts[reason] += 1
        if self.on_drop:
            self.on_drop(reason, conv.source, detail)
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.options.examples_per_reason:
            bucket.append({"source": conv.source, "text": _excerpt(text_of(conv)), **detail})

    def _cluster(self, kind: str, side: str, key: int, source: str, sim: float) -> None:
        entry = self.clusters.setdefault((kind, side, key), [1, 1.0, []])
        entry[0] += 1
        entry[1] = min(entry[1], sim)
        if len(entry[2]) < 3:
            entry[2].append(source)

    def _leak(self, eval_source: str, train_source: str, sim: float) -> None:
        self.leaks.append({"eval": eval_source, "train": train_source, "similarity": round(sim, 3)})

    def _count_answer(self, conv: Conversation) -> None:
        h = hashlib.blake2b(comparable(conv.answer).encode(), digest_size=8).digest()
        self.answers[h] += 1
        if self.answers[h] == 2:  # keep text only for answers that repeat
            self.answer_text[h] = conv.answer

    # -- result --------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Apply the invalid-share policy and return the report.

        Raises:
            DataError: too many invalid records, none valid, or nothing left to train on.
        """
        self.tally.finish()
        report = self.report()
        if report["kept"] == 0:
            dropped = ", ".join(f"{r} {report[r]}" for r in DROP_REASONS if report[r])
            raise DataError(f"no training records left after cleaning ({dropped})")
        return report

    def report(self) -> dict[str, Any]:
        """The ``clean_report.json`` content (see docs/data.md for every key)."""
        kept = len(self.sides["train"].sources)
        clusters = sorted(self.clusters.items(), key=lambda kv: -kv[1][0])[:_TOP]
        common = [
            (h, n) for h, n in self.answers.most_common(_TOP) if n >= self.options.answer_repeat_min
        ]
        return {
            "input_records": self.tally.total,
            "kept": kept,
            "eval_kept": len(self.sides["eval"].sources) - len(self.leaked_eval),
            "invalid": [r.to_json() for r in self.tally.invalid],
            "invalid_by_kind": dict(self.tally.by_kind.most_common()),
            **{reason: self.counts[reason] for reason in DROP_REASONS},
            "examples": self.examples,
            "duplicate_clusters": [
                {
                    "kind": kind,
                    "side": side,
                    "kept": self.sides[side].sources[key],
                    "size": size,
                    "min_similarity": round(low, 3),
                    "dropped": dropped,
                }
                for (kind, side, key), (size, low, dropped) in clusters
            ],
            "eval_leak_pairs": self.leaks,
            "over_represented_answers": [
                {
                    "answer": _excerpt(self.answer_text[h]),
                    "count": n,
                    "share": round(n / max(kept, 1), 4),
                }
                for h, n in common
            ],
            "options": dataclasses.asdict(self.options),
        }


def _invalid_at(source: str, kind: str, reason: str) -> Invalid:
    file, _, pos = source.rpartition(":")
    unit = "row" if pos.startswith("row ") else "line"
    num = pos.removeprefix("row ")
    return Invalid(file or source, int(num) if num.isdigit() else 0, reason, kind, unit)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"
