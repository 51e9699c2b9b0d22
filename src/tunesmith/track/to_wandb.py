"""Weights & Biases: a run in the ``tunesmith`` project; its local files in the run's ``wandb/``.

Online or offline is W&B's own setting (``WANDB_MODE=offline`` writes the run locally for a
later ``wandb sync``); tunesmith does not override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.rundir import RunDir
from tunesmith.track.base import PROJECT, flat_config


class WandbTracker:
    """Config, metrics per step, the eval table as a W&B Table and summary, plots as images."""

    def __init__(self, run: RunDir, config: dict[str, Any], run_id: str | None):
        import wandb

        self.wandb = wandb
        run.wandb_dir.mkdir(parents=True, exist_ok=True)
        # id + resume="allow": --resume continues the same W&B run.
        self.run = wandb.init(
            project=PROJECT,
            name=run.path.name,
            dir=str(run.wandb_dir),
            config=flat_config(config),
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",
            # W&B's console capture wraps sys.stdout/sys.stderr process-wide; tunesmith's own
            # metrics rows already reach W&B, and the wrapper outlives the run in a host program.
            settings=wandb.Settings(console="off"),
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_eval(self, table: dict[str, dict[str, float]]) -> None:
        sides = list(table)
        names = list(dict.fromkeys(m for side in sides for m in table[side]))
        rows = [[m, *(table[s].get(m) for s in sides)] for m in names]
        self.run.log({"eval/table": self.wandb.Table(columns=["metric", *sides], data=rows)})
        for side in sides:
            for name, value in table[side].items():
                self.run.summary[f"eval_{side}/{name}"] = value

    def log_images(self, paths: list[Path]) -> None:
        self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in paths})

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id}

    def finish(self) -> None:
        self.run.finish()


def start(run: RunDir, config: dict[str, Any], resumed: dict[str, Any] | None):
    return WandbTracker(run, config, (resumed or {}).get("id"))
