"""The cleaning decisions: one record at a time, counted under the first reason that drops it.

Steps 1-4 need no other record (:class:`~tunesmith.data.prepare.Preparer`, which may run in
worker processes); steps 5-8 are the decisions of :class:`Cleaner`, in one process.

1. Unicode/whitespace normalization (:mod:`tunesmith.data.normalize`)
2. validation (:mod:`tunesmith.data.validate`): ``invalid``
3. length: ``too_short`` / ``too_long`` (characters, or tokens when a tokenizer is given)
4. repetition: ``repetitive`` (an answer that loops on an n-gram)
5. train/eval side: given eval files, or a deterministic hash split by ``eval_share``
6. exact duplicates on the normalized conversation: ``exact_duplicates``
7. near duplicates (MinHash LSH, :mod:`tunesmith.data.dedup`): ``near_duplicates``
8. leak check: an eval record with an exact or near duplicate in the kept train set is dropped
   from eval: ``eval_leaks``

Memory stays flat in the number of records apart from the LSH index, a 16-byte hash, the
shingle hashes (4 bytes per distinct shingle) and the source string of each kept record, and
one location per dropped record (the report's ``dropped`` list). With ``dedup_window`` (streamed
data) only the last N kept records of each side are remembered, so the index is bounded too.
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
    window: int | None = None
    exact: dict[bytes, int] = field(default_factory=dict)  # digest -> kept key
    sources: dict[int, str] = field(default_factory=dict)  # kept key -> source
    digests: dict[int, bytes] = field(default_factory=dict)  # kept key -> digest (windowed)
    kept: int = 0

    def remember(self, key: int, digest: bytes, source: str) -> None:
        """Record a kept record; windowed, forget the one that falls out of the window."""
        self.exact[digest] = key
        self.sources[key] = source
        self.kept += 1
        if self.window is not None:
            self.digests[key] = digest
            if (old := key - self.window) >= 0 and old in self.sources:
                del self.sources[old]
                self.exact.pop(self.digests.pop(old), None)


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
            side: _SideState(
                NearDupIndex(self.hasher, opts.near_dup_threshold, opts.dedup_window),
                opts.dedup_window,
            )
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
        self.dropped: list[dict[str, str]] = []  # every dropped record: source and reason

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
        own.remember(key, digest, conv.source)
        if side == "train":
            for eval_key, sim in leaks:
                if eval_key not in self.leaked_eval:
                    self.leaked_eval.add(eval_key)
                    self._leak(other.sources[eval_key], conv.source, sim)
                    self.counts["eval_leaks"] += 1
                    self.dropped.append(_dropped(other.sources[eval_key], "eval_leaks"))
                    if self.on_drop:
                        self.on_drop("eval_leaks", other.sources[eval_key], {"kept": conv.source})
            self._count_answer(conv)
        return Kept(side, conv, key)

    # -- bookkeeping ---------------------------------------------------------------------
    def _drop(self, reason: str, conv: Conversation, **detail: Any) -> None:
        self.counts[reason] += 1
        self.dropped.append(_dropped(conv.source, reason))
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
        window = self.options.dedup_window
        if window is not None and len(self.answers) > 2 * window:
            # Bounded: keep the most frequent answers (counts become lower bounds).
            self.answers = Counter(dict(self.answers.most_common(window)))
            self.answer_text = {h: t for h, t in self.answer_text.items() if h in self.answers}

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
        kept = self.sides["train"].kept
        clusters = sorted(self.clusters.items(), key=lambda kv: -kv[1][0])[:_TOP]
        common = [
            (h, n) for h, n in self.answers.most_common(_TOP) if n >= self.options.answer_repeat_min
        ]
        return {
            "input_records": self.tally.total,
            "kept": kept,
            "eval_kept": self.sides["eval"].kept - len(self.leaked_eval),
            "invalid": [r.to_json() for r in self.tally.invalid],
            "invalid_by_kind": dict(self.tally.by_kind.most_common()),
            **{reason: self.counts[reason] for reason in DROP_REASONS},
            "examples": self.examples,
            "duplicate_clusters": [
                {
                    "kind": kind,
                    "side": side,
                    "kept": self.sides[side].sources.get(key, "(outside the dedup window)"),
                    "size": size,
                    "min_similarity": round(low, 3),
                    "dropped": dropped,
                }
                for (kind, side, key), (size, low, dropped) in clusters
            ],
            "eval_leak_pairs": self.leaks,
            "dropped": self.dropped,
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
    unit, _, num = pos.rpartition(" ")
    unit = unit or "line"
    return Invalid(file or source, int(num) if num.isdigit() else 0, reason, kind, unit)


def _dropped(source: str, reason: str) -> dict[str, Any]:
    """A dropped record's report entry; a dataset record also names dataset, split and row."""
    from tunesmith.data.validate import dataset_location

    entry: dict[str, Any] = {"source": source, "reason": reason}
    label, _, pos = source.rpartition(":index ")
    if label and pos.isdigit():
        entry.update(dataset_location(label, int(pos)))
    return entry


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"
