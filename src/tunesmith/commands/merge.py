"""Fold a LoRA, DoRA, rsLoRA or IA3 adapter into its base model and save a stock HF checkpoint.

QLoRA adapters are folded into the base dequantized from 4-bit into the chosen dtype. The
output (sharded safetensors, tokenizer, chat template, generation config and
tunesmith_merge.json recording the base and adapter hashes) is reloaded with stock
transformers and compared with the unmerged adapted model before it is published; a failed
check exits 1 and leaves nothing at OUT_DIR. Prefix, prompt and bottleneck adapters cannot be
merged: use `tunesmith export --format peft`.
"""

from __future__ import annotations

import argparse

HELP = "merge a LoRA-family adapter into its base (verified HF checkpoint)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR|ADAPTER_DIR", help="run or adapter directory")
    parser.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output directory")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="weights dtype of the output (default auto: the base checkpoint's own dtype)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from tunesmith.export import VerificationFailed, merge
    from tunesmith.export.table import print_result

    try:
        result = merge(args.source, args.out, dtype=args.dtype)
    except VerificationFailed as exc:
        print_result({"verification": exc.report.to_dict()}, exc.report, "merge failed", args.json)
        raise
    title = f"merged {result.method} into {result.base['name']} -> {result.out} ({result.dtype})"
    print_result(result.to_dict(), result.verification, title, args.json)
    return 0
