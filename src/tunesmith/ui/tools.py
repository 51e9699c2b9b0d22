"""The Data, Compare and Export pages: thin calls into the library behind the same commands.

Data is ``tunesmith clean``'s report and ``tunesmith data preview``'s masking preview;
Compare is ``tunesmith compare``'s rows, table columns and plot over chosen run directories;
Export is ``tunesmith merge`` / ``export`` with their verification result.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir
from tunesmith.ui.workspace import Workspace

EXPORT_FORMATS = ("merged", "peft", "safetensors", "gguf")


def clean_report(ws: Workspace, file: Path) -> dict[str, Any]:
    """``tunesmith clean``'s report of ``file`` (the cleaned copy goes to the UI's scratch)."""
    from tunesmith.data.clean import clean

    scratch = ws.private("clean")
    result = clean([file], scratch / "cleaned.jsonl", report_path=scratch / "clean_report.json")
    return result.report


def masking_preview(file: Path | None, model: str, n: int, seq_len: int) -> dict[str, Any]:
    """``tunesmith data preview``'s records (trained tokens flagged) and summary."""
    from tunesmith.data.preview import first_records, preview_record, summary
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.models.loading import load_tokenizer

    if file is None:
        from tunesmith.demo.dataset import demo_splits

        convs, invalid = demo_splits(seed=0, n_train=max(n, 50))[0][:n], []
    else:
        convs, invalid = first_records(str(file), n)
    if not convs:
        raise UserInputError(f"{file}: no usable record to preview")
    tokenizer = load_tokenizer(model)
    ensure_chat_template(tokenizer, None)
    records = [preview_record(tokenizer, c, seq_len=seq_len) for c in convs]
    return {
        "eos_token": tokenizer.eos_token,
        "records": [{**asdict(r), "trained_share": round(r.trained_share, 4)} for r in records],
        "invalid": [{"file": b.file, "line": b.line, "reason": b.reason} for b in invalid],
        "summary": summary(records),
    }


def compare_runs(runs: list[RunDir]) -> dict[str, Any]:
    """``tunesmith compare``'s rows for existing runs, the base row and the plot (PNG, base64)."""
    from tunesmith.compare.plot import render_compare_png
    from tunesmith.compare.rows import (
        base_param_count,
        base_row,
        fill_forgetting,
        row_from_run_dir,
        task_metric_name,
    )

    if len(runs) < 1:
        raise UserInputError("pick at least one run to compare")
    rows = [row_from_run_dir(r.path) for r in runs]
    # The base row comes from a run that evaluated the base (--skip-base-eval runs did not).
    evals = [_read_json(r.eval_path) for r in runs]
    ev = next((e for e in evals if (e.get("metrics") or {}).get("base")), None)
    ev = ev or next((e for e in evals if e), {})
    metric = task_metric_name(ev.get("task", ""))
    base = None
    if ev and (ev.get("metrics") or {}).get("base"):
        total = next((base_param_count(r.method, _params(r)) for r in rows if r.total_params), None)
        base = base_row(ev, total)
        fill_forgetting(rows, base)
    png = render_compare_png(rows, metric, base)
    shown = ([base] if base else []) + rows
    for row, run in zip(rows, runs, strict=True):
        row.run_dir = run.path.name
    return {
        "metric": metric,
        "rows": [r.to_dict(metric) for r in shown],
        "plot": base64.b64encode(png).decode() if png else None,
    }


def _params(row):
    from types import SimpleNamespace

    return SimpleNamespace(total_params=row.total_params, trainable_params=row.trainable_params)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def export_run(ws: Workspace, run: RunDir, fmt: str, timeout: float = 1800) -> dict[str, Any]:
    """Merge (``merged``) or export a finished run into ``<run>-<fmt>/``, verified.

    Runs ``tunesmith merge`` / ``tunesmith export ... --json`` in the workspace, as a user would
    there (a base the run names relative to the workspace resolves the same way), in its own
    process (a merge holds the base and the merged model in memory at once).

    Returns:
        The command's JSON result (with ``verification``) and ``out``; when the verification
        failed, ``error`` too (the command then leaves nothing at the output).
    """
    import json
    import subprocess
    import sys

    if fmt not in EXPORT_FORMATS:
        raise UserInputError(f"format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if not run.is_finished():
        raise UserInputError(f"{run.path.name} has not finished training; nothing to export")
    out = run.path.parent / f"{run.path.name}-{fmt}"
    if out.exists():
        raise UserInputError(f"{ws.relative(out)} exists already; remove it to export again")
    src, dst = ws.relative(run.path), ws.relative(out)
    action = ["merge", src] if fmt == "merged" else ["export", src, "--format", fmt]
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", *action, "-o", dst, "--json"],
        cwd=ws.root, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode == 2:  # bad input: the command's one-line message
        raise UserInputError(_last_line(done.stderr) or f"tunesmith {action[0]} refused {src}")
    try:
        payload = json.loads(done.stdout)
    except ValueError:
        payload = {}
    if done.returncode != 0:
        payload["error"] = _last_line(done.stderr) or f"tunesmith {action[0]} failed"
    payload["out"] = dst
    return payload


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("tunesmith ")]
    return lines[-1] if lines else ""
