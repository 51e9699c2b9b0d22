"""Cleaning entry points: :func:`clean` streams data to files, :func:`clean_conversations` in memory.

The decisions (normalize, validate, filter, dedupe, split without leaks) are
:class:`~tunesmith.data.cleaner.Cleaner`'s; this module feeds it from files, ``datasets``
folders or hub ids (:mod:`tunesmith.data.sources`) and writes what it keeps.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from tunesmith.atomic import atomic_path, check_file_target, write_json
from tunesmith.data.cleaner import DROP_REASONS, Cleaner, DropHook, Side
from tunesmith.data.options import CleanOptions
from tunesmith.data.parallel import prepared_stream
from tunesmith.data.readers import read_files
from tunesmith.data.records import Conversation
from tunesmith.data.sources import ReadOptions
from tunesmith.data.validate import Invalid
from tunesmith.errors import ConfigError, DataError

__all__ = [
    "DROP_REASONS",
    "CleanOptions",
    "CleanResult",
    "CleanedData",
    "Cleaner",
    "clean",
    "clean_conversations",
]


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
    read_options: ReadOptions | None = None,
    **options: Any,
) -> CleanResult:
    """Clean data files into ``out`` (JSONL, messages format, ``meta`` kept), streaming.

    Writes ``out``, ``<out_stem>.eval.jsonl`` when there is an eval split (``eval_inputs`` or
    ``eval_share > 0``), and the report (default ``clean_report.json`` beside ``out``). Every
    file is written atomically; on an error none is replaced.

    Args:
        inputs: Train files (JSONL, JSON, CSV, Parquet; alpaca, messages or sharegpt),
            ``datasets`` folders or hub ids ``org/name[:config][@split]``.
        out: The cleaned train file.
        eval_inputs: Eval files; eval records with a near duplicate in train are dropped.
        format: Force a format instead of detecting it per file.
        report_path: Where to write the report.
        tokenizer: Enables the token-length filters (``min_tokens``/``max_tokens``).
        on_drop: Optional ``on_drop(reason, source, detail)`` hook, see :class:`Cleaner`.
        read_options: Dataset split, revision, column mapping and streaming
            (:class:`~tunesmith.data.sources.ReadOptions`).
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
    ro = read_options
    records = _stream(
        read_files(inputs, format, ro), read_files(eval_inputs, format, ro) if eval_inputs else None
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
