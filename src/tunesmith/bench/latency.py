"""Batch-1 inference latency per PEFT method, as ratios to the base model.

The shape of Table 1 in Hu et al., "LoRA" (ICLR 2022, arXiv:2106.09685): serial adapters add
sequential work to every layer and cost latency at batch size 1, a prefix lengthens every
attention, while LoRA merged into the weights (W' = W + s·B·A) is the base network itself.
Each variant is timed on the same seeded input under ``torch.inference_mode``: a forward pass
over ``seq_len`` tokens and a greedy generation of exactly ``new_tokens`` tokens; the median
of ``runs`` timings after ``warmup`` untimed ones is reported (medians shrug off the odd
scheduler hiccup that ruins a mean). The variants are timed *interleaved* (run 1 of every
variant, then run 2, ...), so a machine that gets busier or quieter during the benchmark
shifts all of them alike instead of favouring whichever came first; the price is that all
variants are in memory together (six copies of the model).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

HELP = "batch-1 forward and generation latency per method, as ratios to the base"

VARIANTS: tuple[str, ...] = ("base", "lora", "lora-merged", "houlsby", "parallel", "prefix")


@dataclass
class LatencyRow:
    """Median latencies of one variant (seconds) and their ratio to the base."""

    method: str
    forward_s: float
    generate_s: float
    forward_ratio: float = 1.0
    generate_ratio: float = 1.0
    per_token_ms: float = 0.0


@dataclass
class LatencyReport:
    model: str
    threads: int
    runs: int
    warmup: int
    seq_len: int
    new_tokens: int
    rows: list[LatencyRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, float]:
    """Median wall time of each function, calling them round-robin after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _calls(model, ids, new_tokens: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """``(forward, generate)`` closures for one variant on the shared input ``ids`` (1, T)."""
    import torch
    from transformers import GenerationConfig

    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    # min = max new tokens and no EOS: every variant generates exactly the same amount.
    gen = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=None,
        pad_token_id=pad,
    )
    mask = torch.ones_like(ids)
    prompt = ids[:, : max(1, ids.shape[1] // 4)]
    prompt_mask = torch.ones_like(prompt)

    def forward():
        return model(input_ids=ids, attention_mask=mask)

    def generate():
        return model.generate(input_ids=prompt, attention_mask=prompt_mask, generation_config=gen)

    return forward, generate


def _variant(base, name: str, args):
    """A fresh copy of ``base`` with ``name`` applied; raises LookupError when unavailable."""
    from tunesmith.errors import UserInputError
    from tunesmith.methods import get_method

    registry_name = "lora" if name == "lora-merged" else name
    try:
        spec = get_method(registry_name)
    except UserInputError as exc:
        raise LookupError(f"{registry_name!r} is not registered in tunesmith.methods yet") from exc
    model = spec.apply(copy.deepcopy(base), args)
    if name == "lora-merged":
        model = model.merge_and_unload(safe_merge=True)
    return model.eval()


def bench_latency(
    model: str = "embedded",
    methods: tuple[str, ...] = VARIANTS,
    *,
    runs: int = 20,
    warmup: int = 3,
    seq_len: int = 128,
    new_tokens: int = 32,
    rank: int = 8,
    seed: int = 0,
    loaded: Any = None,
    progress: Callable[[str], None] | None = None,
) -> LatencyReport:
    """Time each variant of ``model`` at batch size 1.

    Args:
        model: ``--model`` reference (``embedded``, hub id, directory, ``.gguf``).
        methods: variants among :data:`VARIANTS`; ``base`` is always measured first.
        runs: timed repetitions per measurement (the median is reported).
        warmup: untimed repetitions before timing.
        seq_len: forward-pass length in tokens; generation starts from its first quarter.
        new_tokens: tokens generated per generation run.
        rank: LoRA rank (adapters use the registry's default bottleneck).
        seed: seeds the input token ids.
        loaded: an already loaded base model (tests, notebooks); skips loading ``model``.
        progress: called with a line of text as each phase starts.

    Returns:
        A :class:`LatencyReport`; methods not yet in the registry are listed in ``skipped``.
    """
    import torch

    from tunesmith.errors import ConfigError
    from tunesmith.methods import MethodArgs

    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        raise ConfigError("methods", ",".join(unknown), "any of " + ", ".join(VARIANTS))
    if loaded is None:
        from tunesmith.models import load_model_and_tokenizer

        loaded = load_model_and_tokenizer(model)[0]
    base = loaded.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, base.config.vocab_size, (1, seq_len), generator=gen)
    args = MethodArgs(rank=rank, alpha=2.0 * rank, dropout=0.0)
    report = LatencyReport(model, torch.get_num_threads(), runs, warmup, seq_len, new_tokens)
    variants = {}
    for name in ["base"] + [m for m in methods if m != "base"]:
        try:
            variants[name] = base if name == "base" else _variant(base, name, args)
        except LookupError as exc:
            report.skipped.append({"method": name, "reason": str(exc)})
    calls = {name: _calls(m, ids, new_tokens) for name, m in variants.items()}
    with torch.inference_mode():
        if progress:
            progress(f"forward: {len(calls)} variants x {runs} runs")
        forward = interleaved_medians({n: c[0] for n, c in calls.items()}, runs, warmup)
        if progress:
            progress(f"generate: {len(calls)} variants x {runs} runs")
        generate = interleaved_medians({n: c[1] for n, c in calls.items()}, runs, warmup)
    for name in variants:
        report.rows.append(
            LatencyRow(
                name,
                forward[name],
                generate[name],
                forward_ratio=forward[name] / forward["base"],
                generate_ratio=generate[name] / generate["base"],
                per_token_ms=1e3 * generate[name] / new_tokens,
            )
        )
    return report


def latency_table(report: LatencyReport):
    from rich.table import Table

    table = Table(
        title=f"batch-1 latency, {report.model}, {report.threads} threads, median of {report.runs}"
    )
    for col in (
        "method",
        f"forward {report.seq_len} tok",
        "× base",
        f"generate {report.new_tokens} tok",
        "× base",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in report.rows:
        table.add_row(
            r.method,
            f"{1e3 * r.forward_s:.1f} ms",
            f"{r.forward_ratio:.2f}",
            f"{1e3 * r.generate_s:.0f} ms",
            f"{r.generate_ratio:.2f}",
        )
    from tunesmith.bench.machine import describe, one_line

    skipped = [f"skipped {s['method']}: {s['reason']}" for s in report.skipped]
    table.caption = "\n".join([one_line(describe()), *skipped])
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="embedded", help="base model (default: embedded SmolLM2-135M)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(VARIANTS),
        metavar="METHOD",
        help=f"variants to time (space or comma separated; default: {' '.join(VARIANTS)})",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--seq-len", type=int, default=128, help="forward-pass length in tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 gives steadier numbers on a busy machine",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from tunesmith.errors import ConfigError

    methods = tuple(m for item in args.methods for m in item.split(",") if m)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("threads", args.threads, "an integer >= 1")
        import torch

        torch.set_num_threads(args.threads)
    for key in ("runs", "seq_len", "new_tokens"):
        if getattr(args, key) < 1:
            raise ConfigError(key.replace("_", "-"), getattr(args, key), "an integer >= 1")
    report = bench_latency(
        args.model,
        methods,
        runs=args.runs,
        warmup=max(0, args.warmup),
        seq_len=args.seq_len,
        new_tokens=args.new_tokens,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console

        Console().print(latency_table(report))
    return 0
