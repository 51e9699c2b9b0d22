"""Validate, normalize and deduplicate instruction data; split train/eval without leaks.

Reads alpaca, messages (OpenAI/ChatML) or sharegpt records from JSONL, JSON, CSV or Parquet
files (format detected per file, or --format), drops invalid records (reported with file, line
and reason), exact and near duplicates (MinHash LSH over word shingles), repetitive answers and
records outside the length limits, and writes OUT as JSONL in messages format, OUT's
<stem>.eval.jsonl when there is an eval split, and clean_report.json beside OUT.

Example:
  tunesmith clean raw.jsonl -o data/train.jsonl --eval-share 0.1
"""

from __future__ import annotations

import argparse
import json
import sys

from tunesmith.commands._args import finite_float, non_negative_int, positive_int

HELP = "validate, normalize, dedupe and split instruction data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IN",
        help="input files (.jsonl, .json, .csv, .parquet), datasets folders or hub ids org/name[:config][@split]",
    )
    parser.add_argument("-o", "--out", required=True, help="the cleaned train file (JSONL)")
    parser.add_argument(
        "--report", default=None, help="report path (default: clean_report.json beside OUT)"
    )
    parser.add_argument(
        "--eval-data", nargs="+", default=None, metavar="F", help="eval files to check for leaks"
    )
    parser.add_argument(
        "--eval-share", type=finite_float, default=0.0, help="share split off to eval (default 0)"
    )
    parser.add_argument(
        "--near-dup-threshold",
        type=finite_float,
        default=0.8,
        help="Jaccard similarity of near duplicates (default 0.8)",
    )
    parser.add_argument(
        "--format", choices=("alpaca", "messages", "sharegpt"), default=None, help="force a format"
    )
    parser.add_argument(
        "--on-error", choices=("skip", "fail"), default="skip", help="bad records (default skip)"
    )
    parser.add_argument(
        "--max-invalid-share",
        type=finite_float,
        default=0.2,
        help="fail when more records are bad (default 0.2)",
    )
    parser.add_argument(
        "--min-chars",
        type=non_negative_int,
        default=1,
        help="drop shorter conversations (default 1)",
    )
    parser.add_argument(
        "--max-chars", type=positive_int, default=None, help="drop longer conversations"
    )
    parser.add_argument(
        "--max-repeat-ratio",
        type=finite_float,
        default=0.5,
        help="drop answers with more repeated 3-grams (default 0.5)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="NAME_OR_DIR",
        help="count tokens with this tokenizer (hub id or local dir) for --min/--max-tokens",
    )
    parser.add_argument(
        "--min-tokens", type=positive_int, default=None, help="drop shorter conversations"
    )
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="drop longer conversations (e.g. the seq-len)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the eval split (default 0)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=0,
        help="extra processes for hashing; for large inputs (default 0)",
    )
    parser.add_argument(
        "--columns",
        default=None,
        metavar="FIELD=COLUMN,...",
        help="map dataset columns onto format fields, e.g. instruction=question,output=answer",
    )
    parser.add_argument("--data-split", default=None, help="split of datasets (default: train)")
    parser.add_argument("--data-revision", default=None, help="hub dataset revision")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="stream datasets (bounded memory: duplicates are found within a window of kept records)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from tunesmith.data.clean import DROP_REASONS

    table = Table(title="tunesmith clean")
    table.add_column("records")
    table.add_column("count", justify="right")
    table.add_row("input", str(report["input_records"]))
    for kind, n in report["invalid_by_kind"].items():
        table.add_row(f"invalid: {kind}", str(n))
    for reason in DROP_REASONS:
        if report[reason]:
            table.add_row(reason.replace("_", " "), str(report[reason]))
    table.add_row("kept (train)", str(report["kept"]), style="bold")
    if report["files"]["eval"]:
        table.add_row("kept (eval)", str(report["eval_kept"]), style="bold")
    Console(stderr=False).print(table)
    for entry in report["over_represented_answers"][:3]:
        print(f"over-represented answer ({entry['count']}x): {entry['answer']}")


def _tokenizer(name: str | None):
    if name is None:
        return None
    from transformers import AutoTokenizer

    from tunesmith.errors import UserInputError

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot load tokenizer {name!r}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from tunesmith.data.clean import clean
    from tunesmith.data.sources import ReadOptions, parse_columns
    from tunesmith.errors import UserInputError
    from tunesmith.train.data_plan import DEDUP_WINDOW

    if (args.min_tokens is not None or args.max_tokens is not None) and not args.tokenizer:
        raise UserInputError("--min-tokens/--max-tokens need --tokenizer")

    result = clean(
        args.inputs,
        args.out,
        eval_inputs=args.eval_data,
        format=args.format,
        report_path=args.report,
        tokenizer=_tokenizer(args.tokenizer),
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        eval_share=args.eval_share,
        near_dup_threshold=args.near_dup_threshold,
        on_error=args.on_error,
        max_invalid_share=args.max_invalid_share,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        max_repeat_ratio=args.max_repeat_ratio,
        seed=args.seed,
        workers=args.workers,
        read_options=ReadOptions(
            args.data_split, args.data_revision, parse_columns(args.columns), args.streaming
        ),
        dedup_window=DEDUP_WINDOW if args.streaming else None,
    )
    if args.json:
        json.dump(result.report, sys.stdout, ensure_ascii=False, indent=2)
        print()
    else:
        _summary(result.report)
        print(f"wrote {result.train_path}" + (f", {result.eval_path}" if result.eval_path else ""))
        print(f"report {result.report_path}")
    return 0
