"""Fold a LoRA, DoRA, rsLoRA or IA3 adapter into its base model and save a stock HF checkpoint.

QLoRA adapters are folded into the base dequantized from 4-bit, then stored in the chosen
dtype. The output (sharded safetensors, tokenizer, chat template, generation config and
tunesmith_merge.json recording the base and adapter hashes) is reloaded with stock
transformers and compared with the unmerged adapted model before it is published; a failed
check exits 1 and leaves nothing at OUT_DIR. Prefix, prompt and bottleneck adapters cannot be
merged: use `tunesmith export --format peft`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from tunesmith.commands._args import positive_int

HELP = "merge a LoRA-family adapter into its base (verified HF checkpoint)"


def add_common_arguments(parser: argparse.ArgumentParser, out_help: str, dtype_help: str) -> None:
    """Arguments ``merge`` and ``export`` share: source, output, dtype, verification, JSON."""
    parser.add_argument("source", metavar="RUN_DIR|ADAPTER_DIR", help="run or adapter directory")
    parser.add_argument("-o", "--out", required=True, metavar="OUT", help=out_help)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help=dtype_help
    )
    parser.add_argument(
        "--prompts",
        metavar="FILE",
        help="verify on these prompts (a data file, e.g. the run's eval split) instead of built-in ones",
    )
    parser.add_argument(
        "--max-prompts", type=positive_int, default=8, help="with --prompts: how many"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=16, help="greedy tokens generated per prompt"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run_verified(args: argparse.Namespace, work: Callable[..., Any], what: str) -> int:
    """Call ``work(probe=...)``; print its result (or the failed verification) and exit code."""
    from tunesmith.commands._console import quiet_libraries

    quiet_libraries()  # before tunesmith.export loads peft, and with it bitsandbytes
    from tunesmith.errors import ConfigError
    from tunesmith.export import VerificationFailed
    from tunesmith.export.table import print_result
    from tunesmith.export.verify import DEFAULT_PROMPTS, Probe, prompts_from_file

    for key in ("max_prompts", "max_new_tokens"):
        if getattr(args, key) < 1:
            raise ConfigError(key.replace("_", "-"), getattr(args, key), "an integer >= 1")
    prompts = prompts_from_file(args.prompts, args.max_prompts) if args.prompts else DEFAULT_PROMPTS
    try:
        result = work(probe=Probe(prompts, args.max_new_tokens))
    except VerificationFailed as exc:
        print_result(
            {"verification": exc.report.to_dict()}, exc.report, f"{what} failed", args.json
        )
        raise
    payload = result.to_dict()
    title = f"{what}: {result.method} -> {result.out}" + (
        f" ({payload['dtype']})" if "dtype" in payload else ""
    )
    print_result(payload, result.verification, title, args.json)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        out_help="output directory",
        dtype_help="weights dtype of the output (default auto: the base checkpoint's own dtype)",
    )


def run(args: argparse.Namespace) -> int:
    from tunesmith.export import merge

    return run_verified(
        args,
        lambda probe: merge(args.source, args.out, dtype=args.dtype, probe=probe),
        "merged",
    )
