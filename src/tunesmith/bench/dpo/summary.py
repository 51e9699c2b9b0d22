"""The DPO bench's results: its headline ratios, final lines and table, on the training bench's."""

from __future__ import annotations

from typing import Any

from tunesmith.bench.train import summary as train_summary
from tunesmith.bench.train.summary import (
    LEAD_COLUMNS,
    RSS_COLUMN,
    THROUGHPUT_COLUMNS,
    Column,
    pad_percent,
    rows_table,
)

FINAL_KEYS: tuple[str, ...] = ("speedup_vs_trl_default", "speedup_vs_trl_tuned", "peak_rss_ratio")


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Tokens/s and peak RSS ratios of the medians (NaN where a variant is absent)."""
    full = train_summary.summarize(rows)
    return {key: full[key] for key in FINAL_KEYS}


def final_lines(summary: dict[str, float]) -> list[str]:
    """The bench's last three lines, ``key=value`` in :data:`FINAL_KEYS` order."""
    return train_summary.final_lines(summary, FINAL_KEYS)


def parse_final_lines(text: str) -> dict[str, float]:
    """Read :func:`final_lines` back from the end of the bench's output."""
    return train_summary.parse_final_lines(text, FINAL_KEYS)


def results_table(report: dict[str, Any]):
    s = report["settings"]
    title = (
        f"DPO, {s['model']}, LoRA r=8 q/v, beta {s['beta']}, {s['batch_size']} pairs/step, "
        f"{s['steps']} steps (1 warm-up)"
    )
    columns: list[Column] = [
        *LEAD_COLUMNS,
        ("reference", lambda r: r["reference"]),
        *THROUGHPUT_COLUMNS,
        ("setup s", lambda r: f"{r['setup_s']:.1f}"),
        ("pad %", pad_percent),
        RSS_COLUMN,
        ("DPO loss", lambda r: f"{r['final_train_loss']:.4f}"),
    ]
    return rows_table(report, title, columns)
