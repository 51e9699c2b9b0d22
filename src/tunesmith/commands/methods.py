"""List the PEFT methods with their unified-view description and trainable-parameter formula.

He et al. (ICLR 2022) show that adapters, prefix tuning and LoRA all add a small function f(x)
beside a frozen layer and differ in f's form, its position (attention / FFN / keys-values /
embeddings), serial vs parallel insertion, and how f's output is composed (add, scaled add,
gate, rescale). This table lays every --method out along those axes.

With --model-config the table adds each method's trainable-parameter count for that model,
computed from its config alone (nothing is loaded): a config.json, a model directory, or
`embedded-size` for SmolLM2-135M-Instruct (the embedded default).

Example:
  tunesmith methods
  tunesmith methods --model-config embedded-size --rank 16 --target all-linear --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tunesmith.commands._args import add_lora_size_arguments, positive_int
from tunesmith.errors import UserInputError

HELP = "the PEFT methods: unified-view description, parameter formula, counts"

EMBEDDED_SIZE = "embedded-size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-config",
        metavar="PATH|embedded-size",
        default=None,
        help="add trainable-parameter counts for this model config (config.json or model dir)",
    )
    add_lora_size_arguments(parser, "for the counts")
    parser.add_argument(
        "--num-virtual-tokens",
        type=positive_int,
        default=20,
        help="prefix/prompt/MAM length (default 20)",
    )
    parser.add_argument(
        "--bottleneck", type=positive_int, default=64, help="bottleneck-adapter width (default 64)"
    )
    parser.add_argument(
        "--freeze-top-k",
        type=positive_int,
        default=2,
        help="freeze: trained top blocks (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")


def load_model_config(spec: str) -> Any:
    """A config object from ``embedded-size``, a config.json file or a model directory."""
    if spec == EMBEDDED_SIZE:
        from tunesmith.plan.configs import load_model_config as planner_config

        return planner_config("embedded")
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserInputError(
            f"--model-config: {spec!r} is neither {EMBEDDED_SIZE}, a config.json nor a model directory"
        )
    from transformers import AutoConfig

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    except (ValueError, KeyError) as exc:
        raise UserInputError(f"--model-config: cannot read {path}: {exc}") from exc


def method_rows(model_config: Any = None, args: Any = None) -> list[dict[str, Any]]:
    """One dict per method: its unified view, formula and, given a config, its counts."""
    from tunesmith.methods import get_method, method_names
    from tunesmith.shape import model_shape

    total = model_shape(model_config).total_params if model_config is not None else None
    rows = []
    for name in method_names():
        spec = get_method(name)
        row: dict[str, Any] = {
            "name": name,
            "summary": spec.summary,
            "paper": spec.paper,
            "form": spec.view.form,
            "position": spec.view.position,
            "insertion": spec.view.insertion,
            "composition": spec.view.composition,
            "param_formula": spec.param_formula,
            "mergeable": spec.mergeable,
            "quantized_base": spec.quantized_base,
            "peft_format": spec.peft_format,
            "trains_base_weights": spec.trains_base_weights,
            "targets_modules": spec.targets_modules,
            "kv_prefix": spec.kv_prefix,
            "default_lr": spec.default_lr,
        }
        if model_config is not None:
            n = int(spec.count_trainable(model_config, args))
            row.update(trainable=n, trainable_share=n / total)
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]], with_counts: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PEFT methods in the unified view (He et al., ICLR 2022)")
    table.add_column("method", no_wrap=True)
    for col in ("form f", "position", "insertion", "composition", "trainable params"):
        table.add_column(col, overflow="fold")
    table.add_column("merge")
    if with_counts:
        table.add_column("count", justify="right")
        table.add_column("share", justify="right")
    for r in rows:
        cells = [
            r["name"], r["form"], r["position"], r["insertion"], r["composition"],
            r["param_formula"], "yes" if r["mergeable"] else "no",
        ]  # fmt: skip
        if with_counts:
            cells += [f"{r['trainable']:,}", f"{100 * r['trainable_share']:.3f}%"]
        table.add_row(*cells)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    from tunesmith.commands._console import quiet_libraries
    from tunesmith.methods import MethodArgs
    from tunesmith.methods.targets import resolve_targets

    quiet_libraries()  # the registry imports peft, and with it bitsandbytes

    config = load_model_config(args.model_config) if args.model_config else None
    method_args = None
    if config is not None:
        method_args = MethodArgs(
            rank=args.rank,
            target=resolve_targets(args.target, config),
            num_virtual_tokens=args.num_virtual_tokens,
            bottleneck=args.bottleneck,
            freeze_top_k=args.freeze_top_k,
        )
    rows = method_rows(config, method_args)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        _print_table(rows, with_counts=config is not None)
    return 0
