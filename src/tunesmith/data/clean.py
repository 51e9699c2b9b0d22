"""Cleaning: normalize, filter, deduplicate (exact + near), split train/eval without leaks, report.

One record at a time, in this order; a record is counted under the first reason that drops it.
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
shingle hashes (4 bytes per distinct shingle) and the source string of each kept record.
:func:`clean` streams files to files; :func:`clean_conversations` is the in-process form
``train`` uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal

from tunesmith.atomic import atomic_path, check_file_target, write_json
from tunesmith.data.dedup import NearDupIndex
from tunesmith.data.normalize import comparable, text_of
from tunesmith.data.options import CleanOptions
from tunesmith.data.parallel import prepared_stream
from tunesmith.data.prepare import Prepared, Preparer
from tunesmith.data.readers import read_files
from tunesmith.data.records import Conversation
from tunesmith.data.validate import Invalid, Tally
from tunesmith.errors import ConfigError, DataError

__all__ = ["CleanOptions", "CleanResult", "CleanedData", "Cleaner", "clean", "clean_conversations"]

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


# -- entry points ------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanedData:
    """What :func:`clean_conversations` returns: kept records in memory, and the report."""

    train: list[Conversation]
    eval: list[Conversation]
    report: dict[str, Any]


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean` returns: the files written and the report."""

    train_path: Path
    eval_path: Path | None
    report_path: Path
    report: dict[str, Any]


def _stream(
    train: Iterable[Conversation | Invalid], eval: Iterable[Conversation | Invalid] | None
) -> Iterator[tuple[Conversation | Invalid, Side | None]]:
    # Eval first: train records that arrive later can then mark eval records as leaked, and
    # eval records never need to see train records they precede.
    return chain(((r, "eval") for r in eval or ()), ((r, None) for r in train))


def _options(eval_given: bool, kwargs: dict[str, Any]) -> CleanOptions:
    opts = CleanOptions.from_kwargs(**kwargs)
    if eval_given and opts.eval_share > 0:
        raise ConfigError("eval_share", opts.eval_share, "0 when eval data is given")
    return opts


def clean_conversations(
    train: Iterable[Conversation | Invalid],
    eval: Iterable[Conversation | Invalid] | None = None,
    *,
    tokenizer: Any = None,
    **options: Any,
) -> CleanedData:
    """Clean conversations in memory (``train`` calls this in-process).

    Args:
        train: Conversations (or readers' :class:`Invalid` records); consumed once.
        eval: Optional eval conversations; with them, ``eval_share`` must be 0.
        tokenizer: Enables the token-length filters.
        **options: Any :class:`CleanOptions` field.

    Returns:
        The kept train and eval conversations (normalized) and the report.
    """
    cleaner = Cleaner(_options(eval is not None, options), tokenizer)
    kept_train, kept_eval = [], []
    for item, side in prepared_stream(_stream(train, eval), cleaner.prepare):
        if kept := cleaner.add_prepared(item, side):
            (kept_train if kept.side == "train" else kept_eval).append(kept)
    report = cleaner.finish()
    return CleanedData(
        [k.conv for k in kept_train],
        [k.conv for k in kept_eval if k.key not in cleaner.leaked_eval],
        report,
    )


def eval_path_for(out: str | os.PathLike[str]) -> Path:
    """``<out_stem>.eval.jsonl`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.eval.jsonl")


def clean(
    inputs: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    eval_inputs: Iterable[str | os.PathLike[str]] | None = None,
    format: str | None = None,
    report_path: str | os.PathLike[str] | None = None,
    tokenizer: Any = None,
    on_drop: DropHook | None = None,
    **options: Any,
) -> CleanResult:
    """Clean data files into ``out`` (JSONL, messages format, ``meta`` kept), streaming.

    Writes ``out``, ``<out_stem>.eval.jsonl`` when there is an eval split (``eval_inputs`` or
    ``eval_share > 0``), and the report (default ``clean_report.json`` beside ``out``). Every
    file is written atomically; on an error none is replaced.

    Args:
        inputs: Train files (JSONL, JSON, CSV, Parquet; alpaca, messages or sharegpt).
        out: The cleaned train file.
        eval_inputs: Eval files; eval records with a near duplicate in train are dropped.
        format: Force a format instead of detecting it per file.
        report_path: Where to write the report.
        tokenizer: Enables the token-length filters (``min_tokens``/``max_tokens``).
        on_drop: Optional ``on_drop(reason, source, detail)`` hook, see :class:`Cleaner`.
        **options: Any :class:`CleanOptions` field, e.g. ``eval_share=0.1``,
            ``near_dup_threshold=0.8``, ``num_perm=128``, ``shingle=3``, ``max_chars=8000``.

    Raises:
        DataError: a missing file, ``on_error="fail"`` and a bad record, too many bad records,
            or nothing left.
        ConfigError: an unknown or invalid option.
    """
    inputs = list(inputs)
    eval_inputs = list(eval_inputs) if eval_inputs else None
    if not inputs:
        raise DataError("no input files given")
    opts = _options(bool(eval_inputs), options)
    cleaner = Cleaner(opts, tokenizer, on_drop)
    out = Path(out)
    eval_out = eval_path_for(out) if eval_inputs or opts.eval_share > 0 else None
    report_path = Path(report_path) if report_path else out.parent / "clean_report.json"
    for key, target in (("out", out), ("out", eval_out), ("report", report_path)):
        if target is not None:
            check_file_target(target, key)
    records = _stream(
        read_files(inputs, format), read_files(eval_inputs, format) if eval_inputs else None
    )
    # Eval records wait in a spool file: a later train record may still reveal a leak.
    with (
        atomic_path(out) as tmp_train,
        open(tmp_train, "w", encoding="utf-8") as train_fh,
        tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as spool,
    ):
        for item, side in prepared_stream(records, cleaner.prepare):
            if kept := cleaner.add_prepared(item, side):
                line = json.dumps(kept.conv.to_json(), ensure_ascii=False)
                if kept.side == "train":
                    train_fh.write(line + "\n")
                else:
                    spool.write(f"{kept.key}\t{line}\n")
        report = cleaner.finish()
        if eval_out:
            spool.seek(0)
            with (
                atomic_path(eval_out) as tmp_eval,
                open(tmp_eval, "w", encoding="utf-8") as eval_fh,
            ):
                for row in spool:
                    key, _, line = row.partition("\t")
                    if int(key) not in cleaner.leaked_eval:
                        eval_fh.write(line)
    report["files"] = {"train": str(out), "eval": str(eval_out) if eval_out else None}
    write_json(report_path, report)
    return CleanResult(out, eval_out, report_path, report)
