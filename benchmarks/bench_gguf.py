"""Benchmark GGUF export per ``--quant``: size, llama.cpp speed and answers, time, peak RSS.

For each type: one child process exports the run's merged model (``verify=False``, so the
export alone is timed and its peak RSS is the writer's own); then, in this process, the adapted
model answers the held-out questions once (tunesmith's batched transformers generation, timed)
and every file is checked in llama.cpp against those answers (the same check ``tunesmith
export`` runs): execution accuracy, same answers, token agreement, stops, tokens/s.

Usage:
    python benchmarks/bench_gguf.py RUN_DIR --out /tmp/gguf-bench [--limit 120] [--quants f16,q4_k_m]
    python benchmarks/bench_gguf.py ... --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

QUANTS = ("f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0")


def _export_one(run: str, out: str, quant: str) -> None:
    """Child process: export without verification, print seconds and peak RSS as JSON.

    ``quant == "merge-only"`` loads the fp32 merged model and stops: the baseline the writer's
    own memory is measured against.
    """
    import resource

    import torch

    from tunesmith.export import export
    from tunesmith.models.adapted import load_merged

    start = time.perf_counter()
    if quant == "merge-only":
        load_merged(run, torch.float32)
    else:
        export(run, "gguf", out, quant=quant, verify=False)
    print(
        json.dumps(
            {
                "export_s": time.perf_counter() - start,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


def _check_all(run: str, files: dict[str, Path], limit: int) -> dict[str, dict]:
    import torch

    from tunesmith.export.runtime_check import (
        adapted_answers,
        check_in_llamacpp,
        held_out_conversations,
    )
    from tunesmith.models.adapted import load_adapted
    from tunesmith.models.artifact import locate

    art = locate(run)
    loaded = load_adapted(art, dtype=torch.float32)
    ref = adapted_answers(loaded.model, loaded.tokenizer, held_out_conversations(art, None, limit))
    del loaded
    checks = {}
    for quant, path in files.items():
        checks[quant] = check_in_llamacpp(path, ref, quant).to_dict()
        print(f"checked {quant}: {json.dumps(checks[quant])}", file=sys.stderr, flush=True)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=120, help="held-out questions")
    parser.add_argument("--quants", default=",".join(QUANTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: QUANT or merge-only
    parser.add_argument(
        "--baseline", action="store_true", help="only measure loading the fp32 merged model"
    )
    parser.add_argument(
        "--check-only", action="store_true", help="check the files already in --out, no export"
    )
    args = parser.parse_args()
    if args.one:
        _export_one(args.run, str(args.out), args.one)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        child = [sys.executable, __file__, args.run, "--out", "-", "--one", "merge-only"]
        done = subprocess.run(child, check=True, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1])
        return
    rows, files = {}, {}
    if args.check_only:
        files = {q: args.out / f"model.{q}.gguf" for q in args.quants.split(",")}
        print(json.dumps(_check_all(args.run, files, args.limit), indent=2))
        return
    for quant in args.quants.split(","):
        path = args.out / f"model.{quant}.gguf"
        child = [sys.executable, __file__, args.run, "--out", str(path), "--one", quant]
        done = subprocess.run(child, check=True, capture_output=True, text=True)
        rows[quant] = json.loads(done.stdout.strip().splitlines()[-1])
        rows[quant]["bytes"] = path.stat().st_size
        files[quant] = path
        print(f"exported {quant}: {rows[quant]}", file=sys.stderr)
    for quant, check in _check_all(args.run, files, args.limit).items():
        rows[quant]["llamacpp"] = check
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| quant | file MiB | llama.cpp tok/s | transformers tok/s | exec acc GGUF / adapted |"
        " same answers | token agreement | stopped | export s | peak RSS MiB | check |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for quant, r in rows.items():
        c = r["llamacpp"]
        print(
            f"| {quant} | {r['bytes'] / 2**20:.0f} | {c['tokens_per_s']:.0f} | "
            f"{c['adapted_tokens_per_s']:.0f} | {c['metric_gguf']:.1%} / {c['metric_adapted']:.1%} | "
            f"{c['same_answers']:.1%} | {c['token_agreement']:.1%} | "
            f"{c['stopped_at_end_of_turn']}/{c['adapted_stopped']} | {r['export_s']:.0f} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {'pass' if c['passed'] else 'FAIL'} |"
        )


if __name__ == "__main__":
    main()
