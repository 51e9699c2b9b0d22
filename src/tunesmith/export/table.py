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


def runtime_table(runtime: dict[str, Any]):
    """The llama.cpp check (:class:`~tunesmith.export.runtime_check.RuntimeReport` as a dict)."""
    from rich.table import Table

    table = Table(title=f"answers in {runtime['runtime']} vs the adapted model")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("limit", justify="right")
    n = runtime["n_prompts"]
    answers_limit = f"≥ {runtime['limits']['min_same_answers']:.0%}"
    table.add_row(
        "same greedy answer",
        f"{runtime['same_answers']:.1%} of {n}",
        answers_limit if runtime["check"] == "answers" else "reported",
    )
    table.add_row("tokens before divergence", f"{runtime['token_agreement']:.1%}", "reported")
    if runtime["metric"]:
        table.add_row(
            f"{runtime['metric']} gguf / adapted",
            f"{runtime['metric_gguf']:.1%} / {runtime['metric_adapted']:.1%}",
            f"drop ≤ {runtime['limits']['max_metric_drop_points']:g} points"
            if runtime["check"] == "task"
            else "reported",
        )
    table.add_row(
        "stopped at end-of-turn",
        f"{runtime['stopped_at_end_of_turn']}/{n}",
        f"≥ {runtime['adapted_stopped']} (where the adapted model stopped)",
    )
    table.add_row(
        "chat template in the file", "yes" if runtime["chat_template_preserved"] else "NO", "yes"
    )
    table.add_row(
        "tokens/s llama.cpp / transformers",
        f"{runtime['tokens_per_s']:.0f} / {runtime['adapted_tokens_per_s']:.0f}",
        "",
    )
    verdict = "[green]passed[/green]" if runtime["passed"] else "[red]FAILED[/red]"
    table.caption = verdict + "".join(f"\nnote: {n}" for n in runtime["notes"])
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
    if payload.get("llamacpp"):
        console.print(runtime_table(payload["llamacpp"]))
    if payload.get("note"):
        console.print(f"note: {payload['note']}")
