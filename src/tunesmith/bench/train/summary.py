"""The training bench's results: headline ratios, their four final lines, the table.

The ratios are of medians over repetitions, so one disturbed round does not move them; a
variant that did not run gives NaN rather than an error.
"""

from __future__ import annotations

import statistics
from typing import Any

FINAL_KEYS: tuple[str, ...] = (
    "speedup_vs_trl_default",
    "speedup_vs_trl_tuned",
    "peak_rss_ratio",
    "ceiling_ratio",
)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The four headline ratios from the medians over repetitions (NaN where a variant is absent)."""

    def med(variant: str, key: str) -> float:
        vals = [r[key] for r in rows if r["variant"] == variant]
        return statistics.median(vals) if vals else float("nan")

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "speedup_vs_trl_default": ratio(
            med("tunesmith", "tokens_per_s"), med("trl-default", "tokens_per_s")
        ),
        "speedup_vs_trl_tuned": ratio(
            med("tunesmith", "tokens_per_s"), med("trl-tuned", "tokens_per_s")
        ),
        "peak_rss_ratio": ratio(
            med("tunesmith", "peak_rss_bytes"), med("trl-default", "peak_rss_bytes")
        ),
        "ceiling_ratio": med("tunesmith", "ceiling_ratio"),
    }


def final_lines(summary: dict[str, float]) -> list[str]:
    """The benchmark's last four lines, ``key=value`` in :data:`FINAL_KEYS` order."""
    return [f"{key}={summary[key]:.3f}" for key in FINAL_KEYS]


def parse_final_lines(text: str) -> dict[str, float]:
    """Read the four ``key=value`` lines back from the end of the benchmark's output.

    Raises:
        ValueError: the output does not end with exactly those four lines.
    """
    lines = text.strip().splitlines()[-len(FINAL_KEYS) :]
    keys = [line.split("=", 1)[0] for line in lines]
    if keys != list(FINAL_KEYS):
        raise ValueError(f"output does not end with {', '.join(FINAL_KEYS)}: {lines}")
    return {k: float(line.split("=", 1)[1]) for k, line in zip(keys, lines, strict=True)}


def results_table(report: dict[str, Any]):
    from rich.table import Table

    s = report["settings"]
    c = report["ceilings"]
    table = Table(
        title=(
            f"training, {s['model']}, LoRA r=8 q/v, batch {s['batch_size']}, "
            f"{s['steps']} steps (1 warm-up), ceilings bf16 {c['bf16'] / 1e9:.0f} / "
            f"fp32 {c['fp32'] / 1e9:.0f} GFLOP/s"
        )
    )
    cols = (
        "variant", "rep", "prec", "ckpt", "trained tok/s", "wall s", "pad %",
        "peak RSS GiB", "train loss", "eval loss", "GFLOP/s", "of ceiling",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    if "machine" in report:
        from tunesmith.bench.machine import one_line

        table.caption = one_line(report["machine"])
    for r in report["rows"]:
        total = r["processed_tokens"] + r["padded_tokens"]
        table.add_row(
            r["variant"],
            str(r["rep"]),
            r["precision"],
            "yes" if r["gradient_checkpointing"] else "no",
            f"{r['tokens_per_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{100 * r['padded_tokens'] / max(total, 1):.0f}",
            f"{r['peak_rss_bytes'] / 2**30:.2f}",
            f"{r['final_train_loss']:.4f}",
            f"{r['eval_loss']:.4f}",
            f"{r['flops_per_s'] / 1e9:.1f}",
            f"{r['ceiling_ratio']:.3f}",
        )
    return table
