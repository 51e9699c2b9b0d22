"""Export a run or adapter for other tools, and verify the export.

--format peft         the adapter directory (plus tokenizer and chat template), reloaded with stock peft
--format safetensors  a merged HF checkpoint (see `tunesmith merge`), reloaded with stock transformers
--format gguf         one .gguf file for llama.cpp, Ollama, LM Studio (--quant, default f16;
                      architectures: see --format), reloaded with transformers' GGUF reader and,
                      with the [llamacpp] extra, run in llama.cpp itself on the held-out prompts
                      (results in export.json beside it; --ollama adds a Modelfile)

Every export is compared with the unmerged adapted model (max and mean logit difference,
greedy agreement on a few prompts, or on --prompts FILE); a failed check exits 1 and leaves
nothing at OUT.
"""

from __future__ import annotations

import argparse

from tunesmith.commands._args import positive_int
from tunesmith.commands.merge import add_common_arguments, run_verified
from tunesmith.export.gguf_writer import ARCHITECTURES
from tunesmith.export.quants import DEFAULT_QUANT, QUANT_NAMES

HELP = "export an adapter, a merged checkpoint or a GGUF file (verified)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        out_help="output directory (peft, safetensors) or .gguf file",
        dtype_help="safetensors: weights dtype (default auto: the base checkpoint's own dtype)",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=["peft", "safetensors", "gguf"],
        help=f"gguf supports these architectures: {', '.join(ARCHITECTURES)}",
    )
    parser.add_argument(
        "--quant",
        default=DEFAULT_QUANT,
        choices=QUANT_NAMES,
        help="gguf: tensor type of the matrices (norms stay f32); q4_k_m, q5_k_m and q6_k are "
        "written by llama.cpp's quantizer: pip install 'tunesmith[llamacpp]'. Default f16",
    )
    parser.add_argument(
        "--held-out",
        metavar="FILE",
        help="gguf: the prompts (with answers) llama.cpp must answer as the adapted model does "
        "(default: the run's eval split)",
    )
    parser.add_argument(
        "--held-out-limit", type=positive_int, help="gguf: at most this many held-out prompts"
    )
    parser.add_argument(
        "--ollama", action="store_true", help="gguf: also write an Ollama Modelfile beside it"
    )


def run(args: argparse.Namespace) -> int:
    from tunesmith.export import RuntimeCheckFailed, export
    from tunesmith.export.table import print_result

    def work(probe):
        try:
            return export(
                args.source,
                args.format,
                args.out,
                dtype=args.dtype,
                quant=args.quant,
                probe=probe,
                held_out=args.held_out,
                held_out_limit=args.held_out_limit,
                ollama=args.ollama,
            )
        except RuntimeCheckFailed as exc:  # show the llama.cpp table (or JSON), then exit 1
            payload = {"llamacpp": exc.report.to_dict()}
            print_result(payload, None, "GGUF check in llama.cpp failed", args.json)
            raise

    return run_verified(args, work, f"exported as {args.format}")
