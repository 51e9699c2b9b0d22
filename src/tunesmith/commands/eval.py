"""Evaluate a fine-tuned model against its base on held-out data.

Task metrics come from greedy generations: execution accuracy and exact match for the clinic
text-to-SQL demo, exact match and ROUGE-L for other data. Also reported per side: perplexity
on the eval answers, forgetting (perplexity on a bundled general-text set; a rise means the
model lost general ability) and degeneration (share of generations that hit the length
limit, repeated 4-gram rate). Writes eval.json (into the run directory by default).
"""

from __future__ import annotations

import argparse

from tunesmith.commands._args import positive_int

HELP = "evaluate base vs fine-tuned (task metrics, perplexity, forgetting) -> eval.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        metavar="RUN_DIR|ADAPTER_DIR",
        help="what to evaluate (omit to evaluate --model alone)",
    )
    p.add_argument(
        "--model",
        help="base model (default: the one the adapter was trained on; 'embedded' without a source)",
    )
    p.add_argument(
        "--data",
        help="eval file (default: the run's held-out split; the demo eval set without a run)",
    )
    p.add_argument("--limit", type=positive_int, help="evaluate at most N examples")
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="generation batch size (default 32)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="generation limit (default 64 for the SQL demo, 256 otherwise)",
    )
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--no-forgetting", action="store_true", help="skip general-text perplexity")
    p.add_argument("-o", "--out", help="eval.json path (default RUN_DIR/eval.json or ./eval.json)")
    p.add_argument("--json", action="store_true", help="print eval.json on stdout")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from tunesmith.commands._console import console, eval_table, quiet_libraries

    quiet_libraries()
    from tunesmith.eval.api import evaluate

    out = console(stderr=args.json)
    report = evaluate(
        args.source,
        model=args.model,
        data=args.data,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        base=not args.no_base,
        forgetting=not args.no_forgetting,
        out=args.out,
        say=lambda m: out.print(m, highlight=False),
    )
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        out.print(eval_table(report))
        out.print(f"wrote {report['path']}")
    return 0
