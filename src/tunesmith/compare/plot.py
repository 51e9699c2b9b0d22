"""``compare.png``: task metric against trainable parameters, one labelled point per method.

The picture of Hu et al. (LoRA, arXiv:2106.09685, Fig. 2) and He et al. (arXiv:2110.04366,
Fig. 1): x is trainable parameters on a log scale (they span five orders of magnitude, from a
prompt's few thousand to every weight), y the task metric, the untrained base a dashed line.
Drawn with matplotlib's object API (``Figure`` + Agg canvas), as the run report's plots are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from tunesmith.compare.rows import MethodRow

_BLUE, _GREY = "#2563eb", "#64748b"


def label_offsets(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Vertical label offsets (points) so that labels of coinciding points do not overprint.

    LoRA and QLoRA train the same parameters, so their points share x and often nearly y; a
    label whose point is within ~0.15 decades and 4% of the y range of a higher labelled point
    goes one line (12 pt) below the labels already there.
    """
    import math

    span = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, int]] = []
    out = [5.0] * len(xs)
    # Highest point first, so that of two neighbours the upper one keeps the upper label.
    for i in sorted(range(len(xs)), key=lambda i: -ys[i]):
        x, y = xs[i], ys[i]
        near = [k for px, py, k in placed
                if abs(math.log10(x) - math.log10(px)) < 0.15 and abs(y - py) < 0.04 * span]  # fmt: skip
        line = (max(near) + 1) if near else 0
        placed.append((x, y, line))
        out[i] = 5.0 - 12.0 * line
    return out


def styled_axes(size: tuple[float, float], title: str, xlabel: str, ylabel: str):
    """``(fig, ax)``: the compare plots' shared look (left title, light grid, open frame)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes, at the resolution of every compare plot."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_compare_png(
    rows: Sequence[MethodRow], metric_name: str, base: MethodRow | None = None
) -> bytes | None:
    """PNG bytes of the plot, or None when no method has both a metric and a parameter count."""
    points = [
        r for r in rows if r.task_metric is not None and r.trainable_params and r.error is None
    ]
    if not points:
        return None
    label = metric_name.replace("_", " ")
    fig, ax = styled_axes(
        (7.2, 4.4), f"{label} vs trainable parameters", "trainable parameters (log scale)", label
    )
    ax.set_xscale("log")
    xs = [r.trainable_params for r in points]
    ys = [r.task_metric for r in points]
    ax.scatter(xs, ys, color=_BLUE, s=42, zorder=3)
    for r, dy in zip(points, label_offsets(xs, ys), strict=True):
        ax.annotate(
            r.method, (r.trainable_params, r.task_metric), xytext=(6, dy),
            textcoords="offset points", fontsize=10,
        )  # fmt: skip
    if base is not None and base.task_metric is not None:
        ax.axhline(base.task_metric, color=_GREY, linestyle="--", linewidth=1.2)
        ax.annotate(
            "base (untrained)", (0.99, base.task_metric), xycoords=("axes fraction", "data"),
            xytext=(0, 4), textcoords="offset points", color=_GREY, fontsize=9, ha="right",
        )  # fmt: skip
    # Room for the labels right of the last point and above the top one.
    ax.set_xlim(min(xs) / 3, max(xs) * 6)
    levels = [*ys] + ([base.task_metric] if base and base.task_metric is not None else [])
    pad = max(0.05, 0.1 * (max(levels) - min(levels)))
    # Scores are shares in [0, 1] (accuracy, ROUGE-L): no axis far below zero, but a sliver
    # below it so that points and the base line at 0 stay visible above the x axis.
    lo, hi = min(levels) - pad, max(levels) + pad
    if min(levels) >= 0 and lo < 0:
        lo = -0.03 * hi
    ax.set_ylim(lo, hi)
    return png_bytes(fig)
