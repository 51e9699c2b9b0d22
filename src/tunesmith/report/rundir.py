"""Read what a run directory holds, tolerating a run that stopped half-way.

Every file is optional: a run killed during training has a config and some metrics but no
``eval.json``; one that failed at set-up may have only ``config.yaml``. :func:`load_run`
collects whatever is there and a plain-language note for each expected file that is missing
or unreadable, so the report can show what exists and say what does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError
from tunesmith.report.metrics import read_metrics

# Expected entries of a run directory (DESIGN.md) and what their absence means.
EXPECTED: dict[str, str] = {
    "config.yaml": "the resolved config was not written: the run stopped during set-up",
    "plan.json": "no memory plan was saved before loading the model",
    "metrics.jsonl": "no training step was logged",
    "adapter": "no final adapter: training did not finish",
    "eval.json": "not evaluated: the run stopped before evaluation, or evaluation was skipped",
}
# Entries that are not required, but mark a directory as a run directory when present.
OPTIONAL = ("data", "checkpoints", "compare.json", "report.html")


@dataclass
class RunData:
    """Everything the report shows, read from one run directory."""

    run_dir: Path
    config: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] | None = None
    compare: Any = None
    # (file, why): expected files that are missing or could not be read.
    missing: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name


def is_run_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory holding at least one run-directory entry."""
    path = Path(path)
    return path.is_dir() and any((path / n).exists() for n in (*EXPECTED, *OPTIONAL))


def _read_json(path: Path, missing: list[tuple[str, str]]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        missing.append((path.name, f"could not be read: {exc}"))
        return None


def _read_yaml(path: Path, missing: list[tuple[str, str]]) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        missing.append((path.name, f"could not be read: {exc}"))
        return None
    if not isinstance(data, dict):
        missing.append((path.name, "is not a mapping of config keys"))
        return None
    return data


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory's config, plan, metrics, eval and compare files.

    Args:
        run_dir: The run directory (``runs/<name>``).

    Returns:
        A :class:`RunData`; absent or unreadable files are ``None``/empty and listed in
        ``missing`` with the reason.

    Raises:
        UserInputError: If ``run_dir`` is not a directory with any run-directory entry.
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        what = "does not exist" if not run_dir.exists() else "is not a run directory"
        expected = ", ".join((*EXPECTED, *OPTIONAL))
        raise UserInputError(f"{run_dir} {what} (expected one of: {expected})")
    run = RunData(run_dir=run_dir)
    for name, why in EXPECTED.items():
        if not (run_dir / name).exists():
            run.missing.append((name, why))
    if (run_dir / "config.yaml").is_file():
        run.config = _read_yaml(run_dir / "config.yaml", run.missing)
    if (run_dir / "plan.json").is_file():
        run.plan = _read_json(run_dir / "plan.json", run.missing)
    if (run_dir / "eval.json").is_file():
        run.eval = _read_json(run_dir / "eval.json", run.missing)
    if (run_dir / "compare.json").is_file():
        run.compare = _read_json(run_dir / "compare.json", run.missing)
    run.metrics = [r for r in read_metrics(run_dir / "metrics.jsonl") if isinstance(r, dict)]
    if (run_dir / "metrics.jsonl").is_file() and not run.metrics:
        run.missing.append(("metrics.jsonl", "has no rows: no training step was logged"))
    return run
