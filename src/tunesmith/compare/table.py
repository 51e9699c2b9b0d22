"""The comparison as rich tables for the terminal (exact numbers are in ``compare.json``): one
line per method, and with ``--lr-search`` one per (method, rate) tried."""

from __future__ import annotations

from collections.abc import Sequence

from tunesmith.compare.rows import MethodRow
from tunesmith.report.format import fmt_bytes

# Short column titles and compact numbers keep ten columns inside an 80-column terminal:
# params = trainable parameters, share = of the base's, ppl = eval perplexity, forget = rise of
# general-text perplexity over the base's, train s = seconds in the training loop, lat ms =
# batch-1 forward latency, ×base = its ratio to the base's; preference runs add pref acc and
# margin (the objective's mean implicit-reward margin). tokens/s is in compare.json.
_SHORT = {"execution_accuracy": "exec acc", "rouge_l": "ROUGE-L"}


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _lr(v: float | None, digits: int = 2) -> str:
    """``2e-03``; a searched rate keeps ``digits`` significant digits (6.67e-4 -> ``6.7e-04``)."""
    if v is None:
        return "-"
    mantissa, exponent = f"{v:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def _count(n: int | None) -> str:
    """``134_515_008 -> '134.5M'``, ``3_584 -> '3.6K'``."""
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def _share(v: float | None) -> str:
    # 3 significant digits: "0.342%" for LoRA, "100%" for full fine-tuning.
    return "-" if v is None else f"{100 * v:.3g}%"


def compare_table(rows: Sequence[MethodRow], metric_name: str, title: str = ""):
    """One line per row: parameters, quality, memory, time, latency; errors in the caption."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=title or "method comparison",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),
    )
    # Preference runs (DPO and kin) add the held-out preference accuracy and the mean
    # implicit-reward margin beside the task metric.
    pref = any(r.preference_accuracy is not None for r in rows)
    for col in (
        "method", "lr", "params", "share", _SHORT.get(metric_name, metric_name),
        *(["pref acc", "margin"] if pref else []), "ppl", "forget", "peak mem", "train s",
        "lat ms", "×base",
    ):  # fmt: skip
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    failed = []
    for r in rows:
        if r.error:
            t.add_row(r.method, _lr(r.lr), "[red]failed[/red]")
            failed.append(f"[red]{escape(r.method)} failed:[/red] {escape(r.error)}")
            continue
        t.add_row(
            r.method,
            _lr(r.lr),
            _count(r.trainable_params),
            _share(r.trainable_share),
            _num(r.task_metric, ".3f"),
            *([_num(r.preference_accuracy, ".3f"), _num(r.reward_margin, ".3g")] if pref else []),
            _num(r.eval_perplexity, ".4g"),
            "-" if r.forgetting is None else f"{100 * r.forgetting:+.1f}%",
            "-" if r.peak_mem_bytes is None else fmt_bytes(r.peak_mem_bytes),
            _num(r.train_time_s, ".1f"),
            _num(r.latency_ms, ".1f"),
            _num(r.latency_vs_base, ".2f"),
        )
    if failed:
        t.caption = "\n".join(failed)
    return t


def search_table(runs: Sequence, metric_name: str):
    """One line per (method, rate): status, validation metric and loss, forgetting; ``*`` marks
    each method's pick; reasons of diverged or failed rates go in the caption."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="learning-rate search (validation split)", box=box.SIMPLE_HEAD,
              show_edge=False, padding=(0, 1))  # fmt: skip
    for col in ("method", "lr", "×default", f"val {_SHORT.get(metric_name, metric_name)}",
                "val loss", "forget", ""):  # fmt: skip
        t.add_column(col, justify="left" if col in ("method", "") else "right", no_wrap=True)
    notes = []
    for r in runs:
        if r.status != "ok":
            notes.append(
                f"{escape(r.method)} lr {_lr(r.lr, 3)} {r.status}: {escape(r.reason or '')}"
            )
        t.add_row(
            r.method, _lr(r.lr, 3), f"{r.multiplier:.3g}", _num(r.validation_metric, ".3f"),
            _num(r.validation_loss, ".4f"),
            "-" if r.forgetting is None else f"{100 * r.forgetting:+.1f}%",
            "*" if r.best else ("" if r.status == "ok" else f"[red]{r.status}[/red]"),
        )  # fmt: skip
    if notes:
        t.caption = "\n".join(notes)
    return t
