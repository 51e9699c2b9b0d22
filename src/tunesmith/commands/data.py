"""Inspect training data as the model will see it; build preference pairs from a run.

`preview` renders the first records of FILE with the model's chat template (or a fallback
template, --template) and shows which tokens are trained: answer tokens highlighted, prompt
tokens dim. The summary gives tokens per record, the trained share and whether the
end-of-turn (EOS) token is trained — a model that never sees its EOS trained never stops.
FILE defaults to the bundled clinic text-to-SQL demo data.

`pairs` builds DPO pairs from a trained run's own wrong answers (`data pairs --help`).

Example:
  tunesmith data preview train.jsonl --model Qwen/Qwen2.5-0.5B-Instruct --n 2
  tunesmith data preview --json | jq '.records[0].tokens[:5]'
  tunesmith data pairs runs/smollm2-sft --out runs/smollm2-sft/pairs
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tunesmith.commands import data_pairs
from tunesmith.commands._args import positive_int
from tunesmith.data.preview import (  # noqa: F401 - token_pieces: the command's API too
    RecordPreview,
    first_records,
    preview_record,
    summary,
    token_pieces,
)

HELP = "preview rendered records with the trained tokens highlighted"

TRAINED_STYLE = "bold green"
PROMPT_STYLE = "dim"
OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around trained tokens where colors are lost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunesmith.data.render import FALLBACK_TEMPLATES  # light: no torch

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "preview",
        help=HELP,
        description=(__doc__ or HELP).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "file", nargs="?", default=None, metavar="FILE", help="data file (default: the demo data)"
    )
    p.add_argument(
        "--model",
        default="embedded",
        help="model (its tokenizer and chat template): embedded, hub id, dir, .gguf or run dir",
    )
    p.add_argument("--n", type=positive_int, default=3, help="records to show (default 3)")
    p.add_argument(
        "--template",
        choices=tuple(FALLBACK_TEMPLATES),
        default=None,
        help="fallback chat template (for models without one; replaces the model's own)",
    )
    p.add_argument(
        "--seq-len",
        type=positive_int,
        default=512,
        help="truncate records to this many tokens (512)",
    )
    p.add_argument(
        "--format", choices=("alpaca", "messages", "sharegpt"), default=None, help="force a format"
    )
    p.add_argument(
        "--train-on-prompt", action="store_true", help="also train on prompt tokens (as train)"
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow tokenizer code")
    p.add_argument("--json", action="store_true", help="per-token {text, trained} on stdout")
    data_pairs.add_parser(sub)


def highlighted(record: RecordPreview, markers: bool = False):
    """The record as rich Text: trained tokens bold green, prompt tokens dim.

    With ``markers`` (output that keeps no colors: a pipe, a log) trained runs are also
    enclosed in ``OPEN``/``CLOSE``.
    """
    from rich.text import Text

    text = Text()
    previous = False
    for piece in record.tokens:
        if markers and piece["trained"] != previous:
            text.append(OPEN if piece["trained"] else CLOSE, style="bold")
            previous = piece["trained"]
        text.append(piece["text"], style=TRAINED_STYLE if piece["trained"] else PROMPT_STYLE)
    if markers and previous:
        text.append(CLOSE, style="bold")
    return text


def _conversations(args: argparse.Namespace):
    """The first ``--n`` usable records (the demo's without FILE) and the invalid ones."""
    if args.file is None:
        from tunesmith.demo.dataset import demo_splits

        train, _ = demo_splits(seed=0, n_train=max(args.n, 50))
        return train[: args.n], []
    return first_records(args.file, args.n, args.format)


def _print(records: list[RecordPreview], summ: dict, invalid, eos_token: str) -> None:
    from rich.rule import Rule
    from rich.table import Table

    from tunesmith.commands._console import console

    out = console()
    markers = not out.is_terminal or out.no_color
    out.print(
        f"trained tokens are between {OPEN} {CLOSE}"
        if markers
        else f"[{TRAINED_STYLE}]trained tokens[/] are highlighted, [{PROMPT_STYLE}]prompt tokens[/] dim"
    )
    for r in records:
        out.print(Rule(r.source, align="left"))
        out.print(
            f"{r.num_tokens} tokens, {r.num_trained} trained ({100 * r.trained_share:.0f}%), "
            f"EOS {'trained' if r.eos_trained else '[bold red]NOT trained[/]'}"
            + (", [yellow]truncated at --seq-len[/]" if r.truncated else ""),
            highlight=False,
        )
        # soft_wrap: no line breaks added by rich; the record's own newlines are what matter.
        out.print(highlighted(r, markers), highlight=False, markup=False, soft_wrap=True)
    for bad in invalid:
        out.print(f"[yellow]skipped {bad.file}:{bad.line}: {bad.reason}[/]")
    table = Table(title="summary")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("records", str(summ["records"]))
    table.add_row("tokens per record (mean / max)", f"{summ['tokens_mean']} / {summ['tokens_max']}")
    table.add_row("trained share", f"{100 * summ['trained_share']:.1f}%")
    table.add_row(
        f"EOS {eos_token!r} trained", f"{summ['eos_trained_records']} of {summ['records']}"
    )
    if summ["truncated_records"]:
        table.add_row("truncated at --seq-len", str(summ["truncated_records"]))
    if summ["no_trained_token_records"]:
        table.add_row("no trained token (train refuses)", str(summ["no_trained_token_records"]))
    out.print(table)


def run(args: argparse.Namespace) -> int:
    if args.action == "pairs":
        return data_pairs.run(args)
    from tunesmith.commands._console import quiet_libraries
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.errors import UserInputError
    from tunesmith.models.loading import load_tokenizer

    if args.n < 1 or args.seq_len < 1:
        raise UserInputError("--n and --seq-len must be at least 1")
    quiet_libraries()
    convs, invalid = _conversations(args)
    if not convs:
        raise UserInputError(f"{args.file}: no usable record to preview")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    ensure_chat_template(tokenizer, args.template)
    records = [
        preview_record(tokenizer, c, seq_len=args.seq_len, train_on_prompt=args.train_on_prompt)
        for c in convs
    ]
    summ = summary(records)
    if args.json:
        payload = {
            "model": args.model,
            "template": args.template,
            "eos_token": tokenizer.eos_token,
            "records": [{**asdict(r), "trained_share": round(r.trained_share, 4)} for r in records],
            "invalid": [{"file": b.file, "line": b.line, "reason": b.reason} for b in invalid],
            "summary": summ,
        }
        json.dump(payload, sys.stdout, ensure_ascii=False)
        print()
    else:
        _print(records, summ, invalid, tokenizer.eos_token)
    return 0
