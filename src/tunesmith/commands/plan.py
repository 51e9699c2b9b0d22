"""Plan a fine-tuning run's memory before anything loads, and say what would fit.

The plan itemizes the peak of one training step: weights (4-bit NF4 for qlora, with the fp32
upcast that k-bit preparation does), trainable parameters, gradients, optimizer state,
activations (with or without gradient checkpointing), the logits and the loss's fp32
buffers, and overhead (CUDA context, allocator headroom, evaluation/save peaks). The verdict
is fits (within 90% of the device), tight (within it) or does-not-fit; the recommendation is
the fastest configuration that fits with headroom (method, micro-batch x accumulation at the
same effective batch, checkpointing, 8-bit optimizer, sequence length).

Exit code 0 whether or not the run fits (the plan is the answer); 2 on bad input.

Example:
  tunesmith plan --model llama-2-13b --method lora --gpu 24GB --batch-size 4 --seq-len 2048
  tunesmith plan --model Qwen/Qwen2.5-7B-Instruct --method qlora --gpu rtx4090 --json
  tunesmith plan --model llama-2-13b --method full --gpu a100-80gb --nproc 8 --distributed fsdp
"""

from __future__ import annotations

import argparse
import json

from tunesmith.commands._args import add_lora_size_arguments, positive_int

HELP = "memory plan for model x method x batch x seq-len x GPU, and the best config that fits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="embedded",
        help="bundled name (embedded, llama-2-13b, qwen2.5-7b, ...), hub id, config.json or dir",
    )
    parser.add_argument("--method", default="lora", help="PEFT method (default lora)")
    parser.add_argument(
        "--gpu", default="24GB", help="24GB, 16GiB, rtx4090, a100-80gb, h100, l4, t4, cpu, ..."
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="micro-batch size (default 1)"
    )
    parser.add_argument(
        "--seq-len", type=positive_int, default=512, help="tokens per example (default 512)"
    )
    parser.add_argument(
        "--grad-accum", type=positive_int, default=1, help="accumulation steps (default 1)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off", "auto"),
        default="auto",
        help="recompute activations in the backward; auto = only if needed (default)",
    )
    add_lora_size_arguments(parser, "of the plan")
    parser.add_argument(
        "--optimizer",
        default="adamw",
        help="adamw, adamw8bit, paged_adamw, paged_adamw8bit, sgd (default adamw)",
    )
    parser.add_argument(
        "--precision", default="bf16", choices=("bf16", "fp16", "fp32"), help="compute dtype"
    )
    parser.add_argument(
        "--attn", default="sdpa", choices=("sdpa", "flash", "eager"), help="attention kernel"
    )
    parser.add_argument(
        "--traced",
        action="store_true",
        help="trace one real step on fake tensors for activations/optimizer (slower, exact)",
    )
    parser.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        help="processes (GPUs) training together (default 1)",
    )
    parser.add_argument(
        "--distributed",
        default="ddp",
        choices=("ddp", "fsdp", "zero1", "zero2", "zero3"),
        help="how processes share the model state: ddp replicates it; zero1 shards the "
        "optimizer, zero2 also gradients, fsdp/zero3 also weights (bytes are per process)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan object as JSON")


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def _render(plan) -> None:
    from rich.table import Table

    from tunesmith.commands._console import console

    out = console()
    s = plan.settings
    title = (
        f"{plan.model} · {s.method} · batch {s.batch_size} x {plan.grad_accum} · seq {s.seq_len}"
        f" · checkpointing {'on' if s.gradient_checkpointing else 'off'} · {s.precision}"
    )
    if plan.nproc > 1:
        title += f" · per process of {plan.nproc} ({plan.sharding})"
    table = Table(title=title)
    table.add_column("term")
    table.add_column("bytes", justify="right")
    table.add_column("GiB", justify="right")
    for key, value in plan.breakdown.items():
        table.add_row(key, f"{value:,}", _gib(value))
    table.add_row("total", f"{plan.total_bytes:,}", _gib(plan.total_bytes), style="bold")
    table.add_row("budget", f"{plan.budget_bytes:,}", _gib(plan.budget_bytes))
    out.print(table)
    colour = {"fits": "green", "tight": "yellow"}.get(plan.verdict, "red")
    out.print(
        f"verdict: [{colour}]{plan.verdict}[/{colour}]   params {plan.total_params:,},"
        f" trainable {plan.trainable_params:,}"
    )
    rec = plan.recommendation
    head = "recommendation" if rec["fits"] else "closest configuration (does not fit)"
    out.print(
        f"{head}: {rec['method']}, micro-batch {rec['batch_size']} x accumulation"
        f" {rec['grad_accum']}, seq {rec['seq_len']}, checkpointing"
        f" {'on' if rec['gradient_checkpointing'] else 'off'}, {rec['optimizer']}"
        f" -> {_gib(rec['total_bytes'])} ({rec['verdict']})"
    )
    for change in rec["changes"]:
        out.print(f"  - {change}")


def run(args: argparse.Namespace) -> int:
    from tunesmith.commands._console import quiet_libraries

    quiet_libraries()
    from tunesmith.plan import plan

    gc = {"on": True, "off": False, "auto": None}[args.gradient_checkpointing]
    result = plan(
        args.model,
        args.method,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        grad_accum=args.grad_accum,
        gpu=args.gpu,
        gradient_checkpointing=gc,
        optimizer=args.optimizer,
        precision=args.precision,
        rank=args.rank,
        target=args.target,
        attn=args.attn,
        traced=args.traced,
        nproc=args.nproc,
        sharding=args.distributed,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _render(result)
    return 0
