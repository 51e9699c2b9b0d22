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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunesmith.bench.train import trl_peer
from tunesmith.bench.train.data import prepare_data
from tunesmith.bench.train.measure import BenchSettings, matmul_ceiling, share_limit
from tunesmith.bench.train.summary import summarize

VARIANTS: tuple[str, ...] = ("tunesmith", *trl_peer.VARIANTS)


def set_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads (0 keeps torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def child_env(variant: str, environ: dict[str, str]) -> dict[str, str]:
    """A child's environment: offline, and a peer's OpenMP wait is libgomp's default, what a
    TRL user has (``import tunesmith`` would otherwise choose one), unless the user set one."""
    from tunesmith import cpu_share

    env = {**environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    users = any(n in env for n in cpu_share.USER_SETTINGS) and cpu_share.AUTO_MARK not in env
    if variant != "tunesmith" and not users:
        env.pop(cpu_share.AUTO_MARK, None)
        env.pop("OMP_WAIT_POLICY", None)
        env["GOMP_SPINCOUNT"] = str(cpu_share.LIBGOMP_SPIN)
    return env


def machine_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine the children ran on, with each variant's OpenMP wait setting and, where the
    rows say, tunesmith's CPU kernels and the paths its measured calls took (per round where the
    rounds differ: a source edited while the bench runs renames the build, and the later rounds
    would run without it)."""
    from tunesmith.bench.machine import describe

    waits = _grouped(rows, "omp_wait", lambda row: row["variant"], "unknown wait setting")
    machine = describe() | {"omp_wait": "; ".join(f"{'/'.join(v)}: {w}" for w, v in waits.items())}
    for field in ("cpu_kernels", "kernel_paths"):
        states = _grouped(rows, field, lambda row: str(row.get("rep", "?")))
        if len(states) == 1:
            machine[field] = next(iter(states))
        elif states:
            machine[field] = " / ".join(f"{s} (rounds {', '.join(r)})" for s, r in states.items())
    return machine


def _grouped(rows, field: str, member, default: str | None = None) -> dict[str, list[str]]:
    """Each value of ``field`` in the rows (``default`` where a row has none; rows without it are
    left out when there is no default), with the distinct ``member(row)`` of its rows, in order."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        value = row.get(field, default)
        if value is None:
            continue
        names = groups.setdefault(value, [])
        if member(row) not in names:
            names.append(member(row))
    return groups


def run_spec(argv: list[str], settings_type: type, tunesmith_side, trl_side) -> int:
    """A child process's body: read ``SPEC.json``, run its variant, write ``OUT.json``.

    Args:
        argv: ``[SPEC.json, OUT.json]`` (what :func:`run_child` passes).
        settings_type: The bench's settings dataclass, rebuilt from the spec.
        tunesmith_side: ``(settings, data, workdir) -> row``: the ``tunesmith`` variant.
        trl_side: ``(settings, data, workdir, tuned) -> row``: ``trl-default``, ``trl-tuned``.
    """
    from tunesmith.atomic import write_json

    spec = json.loads(Path(argv[0]).read_text())
    settings = settings_type(**spec["settings"])
    set_threads(settings.threads)
    variant, data, workdir = spec["variant"], spec["data"], Path(spec["workdir"])
    if variant == "tunesmith":
        row = tunesmith_side(settings, data, workdir)
    elif variant in trl_peer.VARIANTS:
        row = trl_side(settings, data, workdir, tuned=variant == "trl-tuned")
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    from tunesmith import cpu_share

    row["omp_wait"] = cpu_share.described()  # the children's settings differ (child_env)
    write_json(Path(argv[1]), row)
    return 0


def child_main(argv: list[str]) -> int:
    """``python -m tunesmith.bench.train SPEC.json OUT.json``: one variant, one process."""
    from tunesmith.bench.train.tunesmith_side import run_tunesmith

    return run_spec(argv, BenchSettings, run_tunesmith, trl_peer.run_trl)


def run_child(
    variant: str,
    settings: Any,
    data: dict[str, str],
    workdir: Path,
    *,
    timeout_s: float | None = None,
    module: str = "tunesmith.bench.train",
) -> dict[str, Any]:
    """Run one variant in a fresh Python process (``python -m module SPEC OUT``); its row.

    ``settings``: a dataclass (:class:`BenchSettings` for this bench) that the child's
    ``module`` reads back from the spec.

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
    proc = subprocess.run(
        [sys.executable, "-m", module, str(spec_path), str(out_path)],
        env=child_env(variant, dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkFailed(f"bench child {variant} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


def alternate_rounds(
    variants: tuple[str, ...],
    reps: int,
    run_one: Callable[[str, int], dict[str, Any]],
    *,
    say: Callable[[str], None],
    label: str,
    before_round: Callable[[int], None] | None = None,
    extra: Callable[[dict[str, Any]], str] = lambda row: "",
) -> list[dict[str, Any]]:
    """``reps`` rounds of every variant in turn, so drift in machine load hits all alike.

    Args:
        variants: The variants, in the order each round runs them.
        reps: Rounds.
        run_one: ``(variant, rep) -> row`` (a child process).
        say: Progress lines.
        label: What one run is (``"30 steps"``), for the progress line.
        before_round: Called with the round's index before its first variant.
        extra: The row's bench-specific tail of its progress line.

    Returns:
        Every row, each with its ``rep``.
    """
    rows = []
    for rep in range(reps):
        if before_round is not None:
            before_round(rep)
        for variant in variants:
            say(f"rep {rep + 1}/{reps}: {variant} ({label}) ...")
            row = run_one(variant, rep)
            row["rep"] = rep
            rows.append(row)
            say(
                f"  {row['tokens_per_s']:.1f} trained tok/s, {row['wall_s']:.1f} s, "
                f"peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB" + extra(row)
            )
    return rows


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

        def each_round(rep: int) -> None:
            for name in ceilings:  # best of every round: the ceiling under the same load
                ceilings[name] = max(ceilings[name], matmul_ceiling(name))

        rows = alternate_rounds(
            variants,
            reps,
            lambda variant, rep: run_child(variant, settings, data, root / f"{variant}-{rep}"),
            say=say,
            label=f"{settings.steps} steps",
            before_round=each_round,
            extra=lambda row: f", eval loss {row['eval_loss']:.4f}",
        )
        for row in rows:
            ceiling = ceilings[row["precision"] if row["precision"] in ceilings else "fp32"]
            row["ceiling_ratio"] = row["flops_per_s"] / ceiling if ceiling else 0.0
        share_limit(rows)  # the peers' rows: the same workload's shape-matched limit
    return {
        "settings": asdict(settings),
        "machine": machine_of(rows),
        "ceilings": ceilings,
        "rows": rows,
        "summary": summarize(rows),
    }
