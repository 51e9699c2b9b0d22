"""The run report: ``report.html`` in a run directory, with its plots as PNG files beside it.

Usage::

    from tunesmith.report import write_report
    write_report("runs/lora-demo")  # -> runs/lora-demo/report.html
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.atomic import atomic_path, write_text
from tunesmith.report.html import render_html
from tunesmith.report.plots import render_plots
from tunesmith.report.rundir import RunData, is_run_dir, load_run

__all__ = ["RunData", "is_run_dir", "load_run", "write_report"]


def _write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``report.html`` and the training-curve PNGs in ``run_dir``.

    Works on incomplete runs: whatever files exist are shown, and the page says which
    expected ones are missing and what that means. All files are written atomically.

    Args:
        run_dir: A run directory (``runs/<name>``).

    Returns:
        The path of ``report.html``.

    Raises:
        UserInputError: If ``run_dir`` is not a run directory.
    """
    run = load_run(run_dir)
    plots = render_plots(run.metrics)
    for name, png in plots.items():
        _write_bytes(run.run_dir / f"{name}.png", png)
    # compare writes its own plot(s); show them, read from disk rather than re-drawn.
    compare_pngs = {p.stem: p.read_bytes() for p in sorted(run.run_dir.glob("compare*.png"))}
    return write_text(run.run_dir / "report.html", render_html(run, plots, compare_pngs))
