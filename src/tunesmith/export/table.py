"""Render a verification report for the terminal (rich) or as JSON."""

from __future__ import annotations

import json
from typing import Any

from tunesmith.export.verify import VerifyReport


def verification_table(report: VerifyReport, title: str):
    """One row per measurement, with the limit it is checked against."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("limit", justify="right")
    n = report.n_prompts
    rows = [
        ("reloaded with", report.loader, ""),
        (
            "max |Δlogit|",
            f"{report.max_abs_diff:.3g}",
            f"≤ {report.limit_abs:.3g} ({report.tolerance})",
        ),
        ("mean |Δlogit|", f"{report.mean_abs_diff:.3g}", ""),
        (
            "greedy choice, decisive positions",
            f"{report.decisive_agreement:.0%} of {report.decisive_positions}"
            if report.decisive_positions
            else "none beyond 2 x limit",
            "100%",
        ),
        (
            "greedy continuation identical",
            f"{round(report.greedy_exact * n)}/{n} prompts",
            "reported",
        ),
        ("greedy tokens before divergence", f"{report.greedy_token_agreement:.0%}", "reported"),
    ]
    if report.dtype:
        rows.append(("weights dtype", report.dtype, ""))
    if report.chat_template_preserved is not None:
        rows.append(
            ("chat template preserved", "yes" if report.chat_template_preserved else "NO", "yes")
        )
    if report.tokenizer_agreement is not None:
        rows.append(("tokenizer gives same ids", f"{report.tokenizer_agreement:.0%}", "reported"))
    for row in rows:
        table.add_row(*row)
    verdict = (
        "[green]passed[/green]"
        if report.passed
        else "[red]FAILED[/red]: " + "; ".join(report.failures)
    )
    table.caption = verdict + "".join(f"\nnote: {n}" for n in report.notes)
    return table


def print_result(
    payload: dict[str, Any], report: VerifyReport | None, title: str, as_json: bool
) -> None:
    """JSON on stdout with ``--json``, else a summary line and the verification table."""
    if as_json:
        print(json.dumps(payload, indent=2, default=str))
        return
    from rich.console import Console

    console = Console()
    console.print(title)
    if report is not None:
        console.print(verification_table(report, "verification against the unmerged adapted model"))
