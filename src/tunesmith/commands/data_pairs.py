"""Build preference pairs from a trained run's own mistakes (on-policy pairs).

`pairs` samples --samples answers per prompt from RUN_DIR's model, scores each with the task's
metric (execution match on the clinic SQL demo, exact match otherwise) and writes a pair per
prompt the model gets wrong: chosen = the reference answer, rejected = the model's most
frequent wrong answer. Prompts whose samples are all right give no pair. Without --data and
--eval-data the prompts are the clinic demo's: training questions -> DIR/pairs.jsonl,
held-out questions -> DIR/pairs_eval.jsonl; DIR/pairs_report.json has the counts.

Example:
  tunesmith train examples/smollm2_lora.yaml --output runs/smollm2-sft
  tunesmith data pairs runs/smollm2-sft --out runs/smollm2-sft/pairs
  tunesmith train --objective dpo --init-from runs/smollm2-sft \\
      --data runs/smollm2-sft/pairs/pairs.jsonl --eval-data runs/smollm2-sft/pairs/pairs_eval.jsonl
"""

from __future__ import annotations

import argparse

from tunesmith.commands._args import finite_float, non_negative_int, positive_int

HELP = "build preference pairs from a trained run's own wrong answers"


def add_parser(sub) -> None:
    """The ``data pairs`` action on the ``data`` command's subparsers."""
    p = sub.add_parser(
        "pairs",
        help=HELP,
        description=(__doc__ or HELP).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="trained run (or adapter/model directory)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the pair files")
    p.add_argument("--samples", type=positive_int, default=4, help="answers per prompt (4)")
    p.add_argument(
        "--temperature",
        type=finite_float,
        default=0.7,
        help="sampling temperature (0.7: the mistakes the model makes; at 1.0 many are noise)",
    )
    p.add_argument("--top-p", type=finite_float, default=1.0, help="nucleus sampling mass (1.0)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (0)")
    p.add_argument("--data", default=None, metavar="FILE", help="training prompts with answers")
    p.add_argument("--eval-data", default=None, metavar="FILE", help="held-out prompts")
    p.add_argument("--n-train", type=positive_int, default=600, help="training prompts (600)")
    p.add_argument("--n-eval", type=positive_int, default=100, help="held-out prompts (100)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="generation batch (32)")
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=None, help="per answer (task default)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.table import Table

    from tunesmith.commands._console import console, quiet_libraries
    from tunesmith.errors import UserInputError
    from tunesmith.eval.generate import SamplingSettings
    from tunesmith.eval.mistakes import REPORT_FILE, write_onpolicy_pairs

    if not Path(args.run_dir).exists():
        raise UserInputError(f"{args.run_dir}: no such run directory")
    try:
        sampling = SamplingSettings(args.temperature, args.top_p, args.seed)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    quiet_libraries()
    out = console()
    report = write_onpolicy_pairs(
        args.run_dir,
        args.out,
        samples=args.samples,
        sampling=sampling,
        data=args.data,
        eval_data=args.eval_data,
        n_train=args.n_train,
        n_eval=args.n_eval,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        say=lambda m: out.print(m, highlight=False),
    )
    table = Table(title=f"on-policy pairs ({args.samples} samples per prompt)")
    for column in ("split", "prompts", "samples", "right", "all right", "pairs"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("train", "eval"):
        if split in report:
            s = report[split]
            table.add_row(
                split,
                str(s["prompts"]),
                str(s["samples"]),
                f"{100 * s['right_share']:.1f}%",
                str(s["prompts_all_right"]),
                str(s["pairs"]),
            )
    out.print(table)
    for split, path in report["files"].items():
        out.print(f"{split} pairs: {path}", highlight=False, soft_wrap=True)
    out.print(f"report: {Path(args.out) / REPORT_FILE}", highlight=False, soft_wrap=True)
    return 0
