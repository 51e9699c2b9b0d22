"""MLflow: a run in the ``tunesmith`` experiment of the tracking URI MLflow is configured with.

Where runs go is MLflow's own setting (``MLFLOW_TRACKING_URI``, e.g. ``file:./mlruns`` or a
server); tunesmith does not override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.rundir import RunDir
from tunesmith.track.base import PROJECT, flat_config


class MlflowTracker:
    """Params from the config, metrics per step, the eval table as metrics and a JSON artifact."""

    def __init__(self, run_name: str, run_id: str | None):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(PROJECT)
        # run_id: --resume reopens the same MLflow run; its metrics continue at later steps.
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        self.run_id = self.run.info.run_id

    def log_config(self, config: dict[str, Any]) -> None:
        params = {k: str(v)[:500] for k, v in flat_config(config).items()}
        self.mlflow.log_params(params, run_id=self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step, run_id=self.run_id)

    def log_eval(self, table: dict[str, dict[str, float]]) -> None:
        flat = {f"eval_{side}/{k}": v for side, m in table.items() for k, v in m.items()}
        self.mlflow.log_metrics(flat, step=0, run_id=self.run_id)
        self.mlflow.log_dict(table, "eval_table.json", run_id=self.run_id)

    def log_images(self, paths: list[Path]) -> None:
        for path in paths:
            self.mlflow.log_artifact(str(path), artifact_path="plots", run_id=self.run_id)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def finish(self) -> None:
        self.mlflow.end_run()


def start(run: RunDir, config: dict[str, Any], resumed: dict[str, Any] | None):
    tracker = MlflowTracker(run.path.name, (resumed or {}).get("run_id"))
    if resumed is None:
        tracker.log_config(config)
    return tracker
