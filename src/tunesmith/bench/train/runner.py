"""The training bench's parent and child processes: one variant per child, alternated rounds.

Each variant runs in its own child process (``python -m tunesmith.bench.train SPEC OUT``), so
imports, caches and peak RSS are its own, and the variants alternate ``tunesmith,
trl-default, trl-tuned, tunesmith, ...`` so that drift in machine load hits all of them alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunesmith.bench.train import trl_peer
from tunesmith.bench.train.data import prepare_data
from tunesmith.bench.train.measure import BenchSettings, matmul_ceiling
from tunesmith.bench.train.summary import summarize

VARIANTS: tuple[str, ...] = ("tunesmith", *trl_peer.VARIANTS)


def set_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads (0 keeps torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def child_main(argv: list[str]) -> int:
    """``python -m tunesmith.bench.train SPEC.json OUT.json``: one variant, one process."""
    spec = json.loads(Path(argv[0]).read_text())
    settings = BenchSettings(**spec["settings"])
    set_threads(settings.threads)
    workdir = Path(spec["workdir"])
    variant = spec["variant"]
    if variant == "tunesmith":
        from tunesmith.bench.train.tunesmith_side import run_tunesmith

        row = run_tunesmith(settings, spec["data"], workdir)
    elif variant in trl_peer.VARIANTS:
        row = trl_peer.run_trl(settings, spec["data"], workdir, tuned=variant == "trl-tuned")
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    from tunesmith.atomic import write_json

    write_json(Path(argv[1]), row)
    return 0


def run_child(
    variant: str,
    settings: BenchSettings,
    data: dict[str, str],
    workdir: Path,
    *,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run one variant in a fresh Python process and return its row.

    Raises:
        WorkFailed: the child exited non-zero (its stderr tail is in the message).
    """
    from tunesmith.atomic import write_json
    from tunesmith.errors import WorkFailed

    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spec.json", workdir / "row.json"
    write_json(
        spec_path,
        {"variant": variant, "settings": asdict(settings), "data": data, "workdir": str(workdir)},
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.bench.train", str(spec_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkFailed(f"bench child {variant} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


def bench_train(
    settings: BenchSettings,
    *,
    reps: int = 1,
    variants: tuple[str, ...] = VARIANTS,
    workdir: Path | None = None,
    progress=None,
) -> dict[str, Any]:
    """Prepare data once, then run ``reps`` alternated rounds of ``variants``.

    Returns:
        ``{"settings", "machine", "ceilings": {"bf16", "fp32"} (FLOP/s), "rows": [...], "summary": {...}}``.
    """
    say = progress or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        root = Path(workdir or tmp)
        say("preparing the cleaned demo data ...")
        data = prepare_data(root / "data", settings)
        ceilings = {"bf16": 0.0, "fp32": 0.0}
        set_threads(settings.threads)  # the ceiling with the threads the runs get
        rows = []
        for rep in range(reps):
            for name in ceilings:  # best of every round: the ceiling under the same load
                ceilings[name] = max(ceilings[name], matmul_ceiling(name))
            for variant in variants:
                say(f"rep {rep + 1}/{reps}: {variant} ({settings.steps} steps) ...")
                row = run_child(variant, settings, data, root / f"{variant}-{rep}")
                row["rep"] = rep
                rows.append(row)
                say(
                    f"  {row['tokens_per_s']:.1f} trained tok/s, {row['wall_s']:.1f} s, "
                    f"peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB, eval loss {row['eval_loss']:.4f}"
                )
        for row in rows:
            ceiling = ceilings[row["precision"] if row["precision"] in ceilings else "fp32"]
            row["ceiling_ratio"] = row["flops_per_s"] / ceiling if ceiling else 0.0
    from tunesmith.bench.machine import describe

    return {
        "settings": asdict(settings),
        "machine": describe(),
        "ceilings": ceilings,
        "rows": rows,
        "summary": summarize(rows),
    }
