"""What every tracker does, and the shapes tunesmith hands them.

A tracker module defines ``start(run, config, resumed) -> Tracker``; the tracker logs
metrics rows, the eval table, the report's plots, and says what ``--resume`` needs to continue
the same tracker run (:meth:`Tracker.state`, kept in the run's ``trackers.json``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

PROJECT = "tunesmith"  # the W&B / Trackio project and the MLflow experiment runs land in


class Tracker(Protocol):
    """One started tracker run."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars named like ``train/loss`` or ``eval/loss`` at optimizer step ``step``."""

    def log_eval(self, table: dict[str, dict[str, float]]) -> None:
        """The eval table: ``{"base": {metric: value}, "adapted": {...}}``."""

    def log_images(self, paths: list[Path]) -> None:
        """The report's PNG plots, as images or artifacts where the tracker has them."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this tracker run (e.g. its id)."""

    def finish(self) -> None:
        """Flush and close the run."""


def metric_tags(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """A ``metrics.jsonl`` row as ``(step, {tag: value})``: ``eval_*`` keys under ``eval/``,
    the others under ``train/``; non-numeric and non-finite values are left out."""
    step = int(row["step"])
    tags = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        tag = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
        tags[tag] = float(value)
    return step, tags


def flat_config(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The resolved config as hyperparameters: lists joined, None spelled out."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out[key] = "None" if value is None else value
    return out


def eval_table(eval_json: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The numeric metrics of ``eval.json`` per side (``base``, ``adapted``)."""
    table: dict[str, dict[str, float]] = {}
    for side, metrics in (eval_json.get("metrics") or {}).items():
        table[side] = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
    return table


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    """The eval table as Markdown (metrics down, sides across)."""
    sides = list(table)
    metrics = list(dict.fromkeys(m for side in sides for m in table[side]))
    lines = ["| metric | " + " | ".join(sides) + " |", "|---" * (len(sides) + 1) + "|"]
    for m in metrics:
        cells = [f"{table[s][m]:.4g}" if m in table[s] else "" for s in sides]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
