"""Export a run or adapter for other tools, and verify the export.

--format peft         the adapter directory (plus tokenizer and chat template), reloaded with stock peft
--format safetensors  a merged HF checkpoint (see `tunesmith merge`), reloaded with stock transformers
--format gguf         one .gguf file for llama.cpp (Llama-family and Qwen2; --gguf-type f32, f16,
                      bf16 or q8_0), reloaded with transformers' GGUF reader

Every export is compared with the unmerged adapted model (max and mean logit difference,
greedy agreement on a few prompts, or on --prompts FILE); a failed check exits 1 and leaves
nothing at OUT.
"""

from __future__ import annotations

import argparse

from tunesmith.commands.merge import add_common_arguments, run_verified

HELP = "export an adapter, a merged checkpoint or a GGUF file (verified)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        out_help="output directory (peft, safetensors) or .gguf file",
        dtype_help="safetensors: weights dtype (default auto: the base checkpoint's own dtype)",
    )
    parser.add_argument("--format", required=True, choices=["peft", "safetensors", "gguf"])
    parser.add_argument(
        "--gguf-type",
        default="f16",
        choices=["f32", "f16", "bf16", "q8_0"],
        help="gguf: tensor type of the matrices (norms stay f32); default f16",
    )


def run(args: argparse.Namespace) -> int:
    from tunesmith.export import export

    def work(probe):
        return export(
            args.source,
            args.format,
            args.out,
            dtype=args.dtype,
            gguf_type=args.gguf_type,
            probe=probe,
        )

    return run_verified(args, work, f"exported as {args.format}")
