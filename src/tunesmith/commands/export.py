"""Export a run or adapter for other tools, and verify the export.

--format peft         the adapter directory (plus tokenizer and chat template), reloaded with stock peft
--format safetensors  a merged HF checkpoint (see `tunesmith merge`), reloaded with stock transformers
--format gguf         one .gguf file for llama.cpp (Llama-family and Qwen2; --gguf-type f32, f16,
                      bf16 or q8_0), reloaded with transformers' GGUF reader

Every export is compared with the unmerged adapted model (max and mean logit difference,
greedy agreement on a few prompts); a failed check exits 1 and leaves nothing at OUT.
"""

from __future__ import annotations

import argparse

HELP = "export an adapter, a merged checkpoint or a GGUF file (verified)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR|ADAPTER_DIR", help="run or adapter directory")
    parser.add_argument("--format", required=True, choices=["peft", "safetensors", "gguf"])
    parser.add_argument(
        "-o", "--out", required=True, metavar="OUT", help="output directory or .gguf file"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="safetensors: weights dtype (default auto: the base checkpoint's own dtype)",
    )
    parser.add_argument(
        "--gguf-type",
        default="f16",
        choices=["f32", "f16", "bf16", "q8_0"],
        help="gguf: tensor type of the matrices (norms stay f32); default f16",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from tunesmith.export import VerificationFailed, export
    from tunesmith.export.table import print_result

    try:
        result = export(
            args.source, args.format, args.out, dtype=args.dtype, gguf_type=args.gguf_type
        )
    except VerificationFailed as exc:
        print_result({"verification": exc.report.to_dict()}, exc.report, "export failed", args.json)
        raise
    title = f"exported {result.method} as {result.format} -> {result.out}"
    print_result(result.to_dict(), result.verification, title, args.json)
    return 0
