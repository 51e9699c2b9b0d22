"""The run directory: every artifact name of a run, its config, its lock and its state.

One place knows the layout of ``runs/<name>/`` (DESIGN.md, "The run directory"); every other
module asks a :class:`RunDir` for a path instead of spelling a file name. The lock
(:class:`RunLock`) makes one process the only writer of a run; :mod:`tunesmith.claim` uses both
to create, replace (``--overwrite``) or resume a run without ever deleting a user's files.
"""

from __future__ import annotations

import contextlib
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.errors import UserInputError

if TYPE_CHECKING:
    from tunesmith.config import TrainConfig

try:  # POSIX advisory locks; where they are missing a run is simply not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunDir:
    """Paths of one run directory and its config, read once.

    Attributes are names relative to the run directory; the properties give full paths.
    """

    CONFIG = "config.yaml"
    PLAN = "plan.json"
    DATA = "data"
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    ADAPTER = "adapter"
    MODEL = "model"  # full / freeze: the whole fine-tuned model
    EVAL = "eval.json"
    EVAL_BASE = "eval_base.json"
    REPORT = "report.html"
    COMPARE = "compare.json"
    LOCK = ".tunesmith.lock"
    TRAIN_FILE = "train.jsonl"  # inside data/
    EVAL_FILE = "train.eval.jsonl"  # inside data/
    CLEAN_REPORT = "clean_report.json"  # inside data/
    # inside data/: a preference run's reference log-probs, scored before its first step
    REFERENCE_LOGPS = "reference_logps_{split}.pt"
    BASE_INFO = "tunesmith_base.json"  # inside adapter/ or model/: which base and method made it
    TRACKERS = "trackers.json"  # --report-to: each tracker's run id, so --resume continues it
    TENSORBOARD = "tensorboard"  # --report-to tensorboard: event files
    WANDB = "wandb"  # --report-to wandb: the W&B run's local files

    # Everything tunesmith may write at the top of a run directory (plots: report/*.png).
    KNOWN = frozenset(
        {CONFIG, PLAN, DATA, METRICS, CHECKPOINTS, ADAPTER, MODEL, EVAL, EVAL_BASE, REPORT,
         COMPARE, LOCK, TRACKERS, TENSORBOARD, WANDB}
    )  # fmt: skip

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # -- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def plan_path(self) -> Path:
        return self.path / self.PLAN

    @property
    def data_dir(self) -> Path:
        return self.path / self.DATA

    @property
    def train_data(self) -> Path:
        return self.data_dir / self.TRAIN_FILE

    @property
    def eval_data(self) -> Path:
        return self.data_dir / self.EVAL_FILE

    @property
    def clean_report(self) -> Path:
        return self.data_dir / self.CLEAN_REPORT

    def reference_logps(self, split: str) -> Path:
        """``split`` ("train" or "eval") pairs' cached reference log-probs."""
        return self.data_dir / self.REFERENCE_LOGPS.format(split=split)

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def adapter(self) -> Path:
        return self.path / self.ADAPTER

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @staticmethod
    def checkpoint_step(path: str | os.PathLike[str]) -> int:
        """The optimizer step a checkpoint directory (``checkpoints/step-N``) was saved at."""
        name = Path(path).name
        if not (name.startswith("step-") and name[5:].isdigit()):
            raise ValueError(f"not a checkpoint directory: {path}")
        return int(name[5:])

    def final_dir(self, peft_format: bool) -> Path:
        """Where the trained result goes: ``adapter/`` (PEFT format) or ``model/``."""
        return self.adapter if peft_format else self.model

    @property
    def trackers_path(self) -> Path:
        return self.path / self.TRACKERS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def wandb_dir(self) -> Path:
        return self.path / self.WANDB

    def plots(self) -> list[Path]:
        """The report's PNG plots (written beside ``report.html``)."""
        return sorted(self.path.glob("*.png"))

    @property
    def eval_path(self) -> Path:
        return self.path / self.EVAL

    @property
    def eval_base_path(self) -> Path:
        return self.path / self.EVAL_BASE

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    # -- contents ----------------------------------------------------------------------------
    @cached_property
    def config(self) -> TrainConfig:
        """The run's resolved ``config.yaml``, read and validated once."""
        from tunesmith.config import load_yaml, make_config

        if not self.config_path.is_file():
            raise UserInputError(f"{self.path} is not a tunesmith run directory (no config.yaml)")
        return make_config(load_yaml(self.config_path))

    def is_run(self) -> bool:
        """Whether tunesmith made this directory (it has the run's ``config.yaml``)."""
        return self.config_path.is_file()

    def is_finished(self) -> bool:
        """Whether training finished and saved its result."""
        return self.adapter.is_dir() or self.model.is_dir()

    def entries(self) -> list[str]:
        """Names at the top of the directory, without the lock file (empty if it is missing)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != self.LOCK)

    def foreign_entries(self) -> list[str]:
        """Top-level names that tunesmith does not write (a user's own files)."""
        return [
            n
            for n in self.entries()
            if n not in self.KNOWN and not n.endswith(".png") and not n.startswith(".")
        ]

    def state(self) -> str:
        """``running`` (another process holds the lock), ``finished``, ``interrupted`` (has a
        checkpoint to resume from), ``failed`` (stopped before its first checkpoint), or
        ``empty`` (not a run)."""
        if not self.is_run():
            return "empty"
        if RunLock.holder(self.path) is not None:
            return "running"
        if self.is_finished():
            return "finished"
        has_checkpoint = self.checkpoints.is_dir() and any(self.checkpoints.iterdir())
        return "interrupted" if has_checkpoint else "failed"


class RunLocked(UserInputError):
    """Another process is writing this run directory."""

    def __init__(self, path: Path, pid: int | None):
        self.path, self.pid = path, pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"run directory {path} is in use by {who} (a tunesmith run writing it); wait for it "
            "to finish or stop it, or choose another --output"
        )


class RunLock:
    """An exclusive advisory lock on a run directory, held by the process writing it.

    The lock file records the holder's pid for the message of the process that loses. The
    lock is released when the process exits, however it exits (``kill -9`` included), so a
    stale lock never blocks a rerun. Since the lock follows the file, the directory may be
    renamed while it is held (the staging directory of ``--overwrite`` is).
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLocked` naming the holder's pid."""
        if fcntl is None or self._fd is not None:
            return self
        path = self.dir / RunDir.LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(self.dir, _read_pid(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def move_to(self, run_dir: Path) -> None:
        """Record that the locked directory was renamed to ``run_dir``."""
        self.dir = Path(run_dir)

    def still_in_place(self) -> bool:
        """Whether the locked directory still exists where this process thinks it is.

        False when it was deleted or replaced under the run: its results would then be
        reported for a directory that no longer holds them.
        """
        if fcntl is None or self._fd is None:
            return self.dir.is_dir()
        try:
            return os.path.samestat(os.fstat(self._fd), os.stat(self.dir / RunDir.LOCK))
        except OSError:
            return False

    @staticmethod
    def holder(run_dir: str | os.PathLike[str]) -> int | None:
        """The pid holding ``run_dir``'s lock (0 if unknown), or None when it is free."""
        path = Path(run_dir) / RunDir.LOCK
        if fcntl is None or not path.is_file():
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path) or 0
        finally:
            os.close(fd)  # closing drops the probe's own shared lock
        return None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None
