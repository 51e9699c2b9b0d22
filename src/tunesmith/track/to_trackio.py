"""Trackio: a run in the local ``tunesmith`` project (``trackio show`` opens the dashboard).

Where Trackio stores runs is its own setting (``TRACKIO_DIR``); tunesmith does not override it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunesmith.rundir import RunDir
from tunesmith.track.base import PROJECT, flat_config


class TrackioTracker:
    """Config, metrics per step, the eval table as final metrics, plots as images."""

    def __init__(self, name: str, config: dict[str, Any], resume: bool):
        import trackio

        self.trackio = trackio
        self.name = name
        # The run is found again by name: --resume continues the same Trackio run.
        self.run = trackio.init(
            project=PROJECT,
            name=name,
            config=flat_config(config),
            resume="allow" if resume else "never",
            embed=False,
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_eval(self, table: dict[str, dict[str, float]]) -> None:
        self.run.log({f"eval_{side}/{k}": v for side, m in table.items() for k, v in m.items()})

    def log_images(self, paths: list[Path]) -> None:
        self.run.log({f"plots/{p.stem}": self.trackio.Image(str(p)) for p in paths})

    def state(self) -> dict[str, Any]:
        return {"name": self.name}

    def finish(self) -> None:
        self.run.finish()


def start(run: RunDir, config: dict[str, Any], resumed: dict[str, Any] | None):
    name = (resumed or {}).get("name") or f"{run.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return TrackioTracker(name, config, resumed is not None)
