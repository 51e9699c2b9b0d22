"""``compare_forgetting.png``: what each learning rate learned against what it forgot.

One point per (method, learning rate) the search trained: y is the task metric on the
validation split, x the rise of general-text perplexity over the base's (forgetting, as
``compare``'s table reports it). Biderman et al. 2024, "LoRA Learns Less and Forgets Less"
(arXiv:2405.09673), plot the same trade-off. The Pareto front (no other point learned as much
while forgetting less) is drawn: those are the settings worth picking from; the method's pick
by validation score is ringed. Drawn with matplotlib's object API, as ``compare.png`` is.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunesmith.compare.plot import png_bytes, styled_axes

_COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04")
_GREY = "#64748b"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, by increasing x.

    A point ``(x, y)`` (x: forgetting, lower is better; y: task metric, higher is better) is
    dominated when another has ``x' <= x`` and ``y' >= y``, one of them strictly.
    """
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _label_offsets(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Vertical label offsets (points): a label near an earlier one goes a line (10 pt) lower."""
    xspan, yspan = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    out: list[float] = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        near = sum(
            abs(x - xs[j]) < 0.06 * xspan and abs(y - ys[j]) < 0.04 * yspan for j in range(i)
        )
        out.append(4.0 - 10.0 * near)
    return out


def render_forgetting_png(
    runs: Sequence, metric_name: str, base_metric: float | None = None
) -> bytes | None:
    """PNG bytes of the plot of :class:`~tunesmith.compare.search.SearchRun` s, or None when
    no run has both a validation metric and a forgetting figure; ``base_metric`` (the untrained
    model's validation score) is drawn as a grey point at no forgetting, for reference."""
    pts = [r for r in runs if r.validation_metric is not None and r.forgetting is not None]
    if not pts:
        return None
    label = metric_name.replace("_", " ")
    fig, ax = styled_axes(
        (8.0, 4.6),
        f"learning vs forgetting: validation {label}",
        "general-text perplexity rise over the base (%)",
        f"validation {label}",
    )
    xs = [100 * r.forgetting for r in pts]
    ys = [r.validation_metric for r in pts]
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color=_GREY, linestyle="--",
            linewidth=1.2, zorder=2, label="Pareto front")  # fmt: skip
    dy = _label_offsets(xs, ys)
    methods = list(dict.fromkeys(r.method for r in pts))
    for k, method in enumerate(methods):
        idx = [i for i, r in enumerate(pts) if r.method == method]
        color = _COLORS[k % len(_COLORS)]
        ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], color=color, s=42, zorder=3,
                   label=method)  # fmt: skip
        for i in idx:
            ax.annotate(f"{pts[i].lr:.3g}", (xs[i], ys[i]), xytext=(5, dy[i]),
                        textcoords="offset points", fontsize=8, color=color)  # fmt: skip
            if pts[i].best:
                ax.scatter([xs[i]], [ys[i]], s=160, facecolors="none", edgecolors=color,
                           linewidths=1.5, zorder=4)  # fmt: skip
    if base_metric is not None:
        ax.scatter([0.0], [base_metric], color=_GREY, marker="s", s=36, zorder=3, label="base")
        ys = [*ys, base_metric]
    # Scores are shares in [0, 1]: pad the axis so a flat row of points is not a hairline.
    pad = max(0.05, 0.1 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - pad, max(ys) + 2 * pad)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.annotate("labels: learning rate; ringed: each method's pick", (0.0, 1.0),
                xycoords="axes fraction", xytext=(4, -12), textcoords="offset points",
                fontsize=8, color=_GREY)  # fmt: skip
    return png_bytes(fig)
