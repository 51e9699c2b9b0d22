"""The training bench's results: headline ratios, their final lines, the table.

The ratios are of medians over repetitions, so one disturbed round does not move them; a
variant that did not run gives NaN rather than an error.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from tunesmith.bench.train.measure import ADAPTERS

FINAL_KEYS: tuple[str, ...] = (
    "speedup_vs_trl_default",
    "speedup_vs_trl_tuned",
    "peak_rss_ratio",
    "ceiling_ratio",
    "shape_limit_ratio",
    "order_limit_ratio",
)


def median_of(rows: list[dict[str, Any]], variant: str, key: str) -> float:
    """The median of ``key`` over ``variant``'s rows (NaN where none of them has it)."""
    vals = [r[key] for r in rows if r["variant"] == variant and key in r]
    return statistics.median(vals) if vals else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The headline ratios from the medians over repetitions (NaN where a variant is absent)."""
    med = median_of
    return {
        "speedup_vs_trl_default": ratio(
            med(rows, "tunesmith", "tokens_per_s"), med(rows, "trl-default", "tokens_per_s")
        ),
        "speedup_vs_trl_tuned": ratio(
            med(rows, "tunesmith", "tokens_per_s"), med(rows, "trl-tuned", "tokens_per_s")
        ),
        "peak_rss_ratio": ratio(
            med(rows, "tunesmith", "peak_rss_bytes"), med(rows, "trl-default", "peak_rss_bytes")
        ),
        "ceiling_ratio": med(rows, "tunesmith", "ceiling_ratio"),
        "shape_limit_ratio": med(rows, "tunesmith", "shape_limit_ratio"),
        "order_limit_ratio": med(rows, "tunesmith", "order_limit_ratio"),
    }


def final_lines(summary: dict[str, float], keys: tuple[str, ...] = FINAL_KEYS) -> list[str]:
    """The benchmark's last lines, ``key=value`` in ``keys`` order."""
    return [f"{key}={summary[key]:.3f}" for key in keys]


def parse_final_lines(text: str, keys: tuple[str, ...] = FINAL_KEYS) -> dict[str, float]:
    """Read the ``key=value`` lines of ``keys`` back from the end of the benchmark's output.

    Raises:
        ValueError: the output does not end with exactly those lines.
    """
    lines = text.strip().splitlines()[-len(keys) :]
    found = [line.split("=", 1)[0] for line in lines]
    if found != list(keys):
        raise ValueError(f"output does not end with {', '.join(keys)}: {lines}")
    return {k: float(line.split("=", 1)[1]) for k, line in zip(found, lines, strict=True)}


Column = tuple[str, Callable[[dict[str, Any]], str]]


def rows_table(report: dict[str, Any], title: str, columns: list[Column]):
    """A rich table of ``report["rows"]``, one column per ``(header, cell)``, the machine below."""
    from rich.table import Table

    table = Table(title=title)
    for header, _cell in columns:
        table.add_column(header, justify="left" if header == "variant" else "right")
    if "machine" in report:
        from tunesmith.bench.machine import one_line

        table.caption = one_line(report["machine"])
    for r in report["rows"]:
        table.add_row(*(cell(r) for _header, cell in columns))
    return table


# The columns every training-style bench's table starts with.
LEAD_COLUMNS: list[Column] = [
    ("variant", lambda r: r["variant"]),
    ("rep", lambda r: str(r["rep"])),
    ("prec", lambda r: r["precision"]),
    ("ckpt", lambda r: "yes" if r["gradient_checkpointing"] else "no"),
]
THROUGHPUT_COLUMNS: list[Column] = [
    ("trained tok/s", lambda r: f"{r['tokens_per_s']:.1f}"),
    ("wall s", lambda r: f"{r['wall_s']:.1f}"),
]
RSS_COLUMN: Column = ("peak RSS GiB", lambda r: f"{r['peak_rss_bytes'] / 2**30:.2f}")


def pad_percent(r: dict[str, Any]) -> str:
    """Padded positions as a share of all positions the forward passes saw."""
    total = r["processed_tokens"] + r["padded_tokens"]
    return f"{100 * r['padded_tokens'] / max(total, 1):.0f}"


def results_table(report: dict[str, Any]):
    s = report["settings"]
    c = report["ceilings"]
    title = (
        f"training, {s['model']}, {ADAPTERS[s.get('adapter', 'qv')]['label']}, "
        f"batch {s['batch_size']}, "
        f"{s['steps']} steps (1 warm-up), ceilings bf16 {c['bf16'] / 1e9:.0f} / "
        f"fp32 {c['fp32'] / 1e9:.0f} GFLOP/s"
    )
    columns: list[Column] = [
        *LEAD_COLUMNS,
        *THROUGHPUT_COLUMNS,
        ("pad %", pad_percent),
        RSS_COLUMN,
        ("train loss", lambda r: f"{r['final_train_loss']:.4f}"),
        ("eval loss", lambda r: f"{r['eval_loss']:.4f}"),
        ("GFLOP/s", lambda r: f"{r['flops_per_s'] / 1e9:.1f}"),
        ("of ceiling", lambda r: f"{r['ceiling_ratio']:.3f}"),
        ("limit s/step", lambda r: f"{r.get('shape_limit_s', 0.0):.3f}"),
        ("of limit", lambda r: f"{r.get('shape_limit_ratio', 0.0):.3f}"),
        ("in order s/step", lambda r: f"{r.get('order_limit_s', 0.0):.3f}"),
        ("of in order", lambda r: f"{r.get('order_limit_ratio', 0.0):.3f}"),
    ]
    return rows_table(report, title, columns)
