"""TensorBoard: event files in the run's ``tensorboard/`` folder (``tensorboard --logdir``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.rundir import RunDir
from tunesmith.track.base import flat_config, markdown_table


class TensorBoardTracker:
    """Scalars per step, the config and eval table as text, the plots as images."""

    def __init__(self, log_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops what a crashed run logged after its checkpoint.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_config(self, config: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in flat_config(config).items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_eval(self, table: dict[str, dict[str, float]]) -> None:
        self.writer.add_text("eval", markdown_table(table), 0)
        for side, metrics in table.items():
            for name, value in metrics.items():
                self.writer.add_scalar(f"eval_{side}/{name}", value, 0)
        self.writer.flush()

    def log_images(self, paths: list[Path]) -> None:
        import matplotlib.image

        for path in paths:
            image = matplotlib.image.imread(path)[..., :3]  # (H, W, 3), RGBA PNGs lose alpha
            self.writer.add_image(f"plots/{path.stem}", image, 0, dataformats="HWC")
        self.writer.flush()

    def state(self) -> dict[str, Any]:
        return {"log_dir": self.writer.log_dir}

    def finish(self) -> None:
        self.writer.close()


def start(run: RunDir, config: dict[str, Any], resumed: dict[str, Any] | None):
    resume_step = (resumed or {}).get("resume_step")
    tracker = TensorBoardTracker(run.tensorboard_dir, resume_step + 1 if resume_step else None)
    if resumed is None:
        tracker.log_config(config)
    return tracker
