"""Shared console helpers for commands: rich output, progress, quiet third-party logs."""

from __future__ import annotations

import os
import time
from typing import Any


def quiet_libraries() -> None:
    """Silence progress bars, advice and notices that third-party libraries print on every load.

    Call it before the libraries are imported. peft imports bitsandbytes whenever it is
    installed, and accelerate imports DeepSpeed; neither is used unless a run asks for 4-bit
    weights or ``--distributed deepspeed``, so their load-time notices say nothing to the user.
    Errors still show.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # datasets reads these when first imported (by --data org/name): no bars, no cache notes.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    import logging
    import warnings

    # bitsandbytes warns on import that an optional hub kernel is missing (it falls back), and
    # the kernels package it asks notes that it skipped a trust check in offline mode.
    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed's "Setting accelerator to CPU" goes to stdout, where it would corrupt --json
    # output. DeepSpeed sets its logger's level itself on import, so a filter drops the notice
    # (one that outlives that setLevel); its other warnings still show in DeepSpeed runs.
    deepspeed = logging.getLogger("DeepSpeed")
    if _accelerator_notice not in deepspeed.filters:
        deepspeed.addFilter(_accelerator_notice)

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*kernels.*")


def _accelerator_notice(record) -> bool:
    """A logging filter: drop DeepSpeed's accelerator-detection notices, keep its errors."""
    import logging

    return record.filename != "real_accelerator.py" or record.levelno >= logging.ERROR


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


class _Progress:
    """Step, loss, tokens/s and ETA on one live line (plain lines when not a terminal)."""

    def __init__(self, out, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.total = total
        self.t0 = time.perf_counter()
        self.p = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=out,
            transient=False,
        )
        self.task = self.p.add_task("train", total=total, loss="-")
        self.p.start()

    def __call__(self, step: int, loss: float) -> None:
        self.p.update(self.task, completed=step, loss=f"{loss:.4f}")

    def close(self) -> None:
        self.p.stop()


def progress_factory(out):
    return lambda total: _Progress(out, total)


def eval_table(eval_json: dict[str, Any]):
    """Base vs adapted metrics with the difference, as a rich table."""
    from rich.table import Table

    metrics = eval_json.get("metrics", {})
    base, adapted = metrics.get("base", {}), metrics.get("adapted", {})
    t = Table(
        title=f"evaluation on {eval_json.get('n')} held-out examples ({eval_json.get('task')})"
    )
    t.add_column("metric")
    t.add_column("base", justify="right")
    t.add_column("fine-tuned", justify="right")
    t.add_column("change", justify="right")
    for name in list(dict.fromkeys([*base, *adapted])):
        b, a = base.get(name), adapted.get(name)
        delta = "" if b is None or a is None else f"{a - b:+.3f}"
        t.add_row(name, "-" if b is None else f"{b:.3f}", "-" if a is None else f"{a:.3f}", delta)
    return t
