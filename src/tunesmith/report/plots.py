"""Training curves from ``metrics.jsonl`` rows, rendered to PNG bytes.

Uses matplotlib's object API (``Figure`` + the Agg canvas) rather than ``pyplot``: no global
backend switch, no figure registry to leak, safe to call from a training process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

# name -> (title, y label, metrics.jsonl key). Loss additionally overlays eval_loss.
PLOTS: dict[str, tuple[str, str, str]] = {
    "loss": ("Loss", "loss (nats / token)", "loss"),
    "lr": ("Learning rate", "learning rate", "lr"),
    "grad_norm": ("Gradient norm (before clipping)", "L2 norm", "grad_norm"),
    "tokens_per_s": ("Throughput", "tokens / s", "tokens_per_s"),
}
_BLUE, _ORANGE, _GREY = "#2563eb", "#ea580c", "#94a3b8"


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the rows that have a finite number under ``key`` and a step."""
    steps, values = [], []
    for row in rows:
        step, value = row.get("step"), row.get(key)
        numeric = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (step, value)
        )
        if numeric and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def ema(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing, to read a noisy loss."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _line(ax: Any, steps: list[float], values: list[float], **kw: Any) -> None:
    # A single point draws no line; a marker keeps it visible.
    ax.plot(steps, values, marker="o" if len(steps) < 2 else None, markersize=4, **kw)


def render_plots(rows: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """PNG bytes per plot in :data:`PLOTS` that has data; plots without data are left out."""
    pngs: dict[str, bytes] = {}
    for name, (title, ylabel, key) in PLOTS.items():
        steps, values = series(rows, key)
        eval_steps, eval_values = series(rows, "eval_loss") if name == "loss" else ([], [])
        if not steps and not eval_steps:
            continue
        fig, ax = _figure(title, ylabel)
        if name == "loss" and len(values) >= 20:
            _line(ax, steps, values, color=_GREY, linewidth=1, label="train (raw)")
            _line(ax, steps, ema(values), color=_BLUE, linewidth=2, label="train (smoothed)")
        elif steps:
            _line(ax, steps, values, color=_BLUE, linewidth=2, label="train")
        if eval_steps:
            ax.plot(eval_steps, eval_values, color=_ORANGE, marker="o", linewidth=2, label="eval")
        if name == "loss":
            ax.legend(frameon=False)
        if name == "tokens_per_s":
            ax.set_ylim(bottom=0)  # from zero, so small jitter does not look like a collapse
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        positive = [v for v in values if v > 0]
        if name == "grad_norm" and positive and max(positive) / min(positive) > 100:
            ax.set_yscale("log")  # early spikes would flatten the rest of the curve
        pngs[name] = _png(fig)
    return pngs
