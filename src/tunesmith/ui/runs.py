"""What the UI shows of a run: read from its run directory only, never from server memory.

A restarted UI therefore shows the truth: the state is :meth:`RunDir.state` (the lock says
whether a process is writing it), steps come from ``metrics.jsonl``, the plan from
``plan.json``, the evaluation from ``eval.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.compare.rows import task_metric_name
from tunesmith.report.metrics import read_metrics
from tunesmith.rundir import RunDir

CURVES = ("loss", "lr", "grad_norm", "tokens_per_s")  # metrics.jsonl keys the run page plots


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def eval_deltas(ev: dict[str, Any] | None) -> dict[str, Any]:
    """Each metric's base, fine-tuned value and change; the headline metric named."""
    ev = ev or {}
    metrics = ev.get("metrics") or {}
    base, adapted = metrics.get("base") or {}, metrics.get("adapted") or {}
    rows = []
    for key, value in adapted.items():
        if not isinstance(value, (int, float)):
            continue
        b = base.get(key)
        delta = value - b if isinstance(b, (int, float)) else None
        rows.append({"metric": key, "base": b, "adapted": value, "delta": delta})
    return {"task": ev.get("task"), "headline": task_metric_name(ev.get("task", "")), "rows": rows}


def summary(run: RunDir, root: Path) -> dict[str, Any]:
    """One line of the runs list."""
    cfg = _config(run)
    metrics = read_metrics(run.metrics_path)
    steps = [r["step"] for r in metrics if "loss" in r and isinstance(r.get("step"), int)]
    deltas = eval_deltas(_json(run.eval_path))
    head = next((r for r in deltas["rows"] if r["metric"] == deltas["headline"]), None)
    return {
        "name": run.path.resolve().relative_to(root).as_posix(),
        "state": run.state(),
        "method": cfg.get("method"),
        "model": cfg.get("model"),
        "step": max(steps, default=0),
        "max_steps": cfg.get("max-steps"),
        "headline": head,
        "modified": run.config_path.stat().st_mtime,
    }


def detail(run: RunDir, root: Path) -> dict[str, Any]:
    """The run page: summary, config, plan, evaluation (with samples), curves and files."""
    out = summary(run, root)
    ev = _json(run.eval_path)
    out.update(
        config=_config(run),
        plan=_json(run.plan_path),
        eval=eval_deltas(ev),
        samples=(ev or {}).get("samples", [])[:20],
        metrics=curves(read_metrics(run.metrics_path)),
        files=files(run, root),
        has_report=run.report_path.is_file(),
        trained=run.is_finished(),
    )
    return out


def curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training rows (step + the plotted keys); evaluation rows are left out."""
    return [
        {"step": r["step"], **{k: r.get(k) for k in CURVES}}
        for r in rows
        if "loss" in r and isinstance(r.get("step"), int)
    ]


def files(run: RunDir, root: Path) -> list[dict[str, Any]]:
    """The run's top-level files (size in bytes; folders as ``dir``)."""
    out = []
    for name in run.entries():
        p = run.path / name
        rel = p.resolve().relative_to(root).as_posix()
        out.append({"name": name, "path": rel, "dir": p.is_dir(), "size": _size(p)})
    return out


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _config(run: RunDir) -> dict[str, Any]:
    """The run's config.yaml as a dict (kebab keys); ``{}`` when it cannot be read."""
    from tunesmith.config import load_yaml
    from tunesmith.errors import UserInputError

    try:
        return load_yaml(run.config_path)
    except UserInputError:
        return {}
