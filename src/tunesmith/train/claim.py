"""Claiming the run directory of a new run: create it, refuse it, or replace it safely.

The rules (docs/reliability.md):

- A run directory is written by one process at a time: it holds the directory's
  :class:`~tunesmith.rundir.RunLock` from before its first file until it exits.
- A directory that is not empty is never written into. ``--overwrite`` replaces only a
  tunesmith run directory that nobody is writing and that holds nothing but tunesmith's own
  files, and never ``/``, the home directory, the current directory or a parent of it.
- The replacement is built beside the old run (``.<name>.new-<pid>``) and swapped in by
  :meth:`Claim.commit` only once the new run's inputs (config, data, model) were accepted;
  until then the old run is untouched, and a failure removes only what the new run made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError, UserInputError, WorkFailed
from tunesmith.rundir import RunDir, RunLock, RunLocked


@dataclass
class Claim:
    """A run directory this process may write.

    Attributes:
        run: where the new run writes now (the staging directory until :meth:`commit`).
        target: where the run lives once committed.
        lock: this process's lock on ``run``.
    """

    run: RunDir
    target: Path
    lock: RunLock
    old_lock: RunLock | None = None  # the replaced run's lock, held until the swap
    created: bool = False  # this process made ``run`` (remove it all on abandon)

    @property
    def staged(self) -> bool:
        return self.old_lock is not None

    def commit(self) -> RunDir:
        """Put the new run in place; under ``--overwrite`` the old run is deleted only now."""
        if self.staged:
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            # Two renames keep the moment in which neither run is at ``target`` tiny.
            os.replace(self.target, old)
            os.replace(self.run.path, self.target)
            self.lock.move_to(self.target)
            shutil.rmtree(old, ignore_errors=True)
            self.old_lock.release()
            self.old_lock = None
            self.run = RunDir(self.target)
        return self.run

    def abandon(self) -> None:
        """Remove what this run wrote (its inputs were refused or it stopped early).

        A directory that existed before (empty, as claimed) is kept; an old run being
        replaced is left exactly as it was.
        """
        path = self.run.path
        if self.created or self.staged:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()
        self.release()

    def release(self) -> None:
        self.lock.release()
        if self.old_lock is not None:
            self.old_lock.release()
            self.old_lock = None

    def check_in_place(self) -> None:
        """Fail if the run directory was deleted or replaced while this process wrote it."""
        if not self.lock.still_in_place():
            raise WorkFailed(
                f"run directory {self.run.path} was removed or replaced while this run was "
                "writing it; its results are not where they were saved"
            )


def claim_for_run(pre, resumed: RunDir | None, target: Path) -> Claim:
    """Lock the run directory this process writes (rank 0 only).

    A new run gets a fresh directory (or, under ``--overwrite``, a staging directory beside
    the old run) holding its ``config.yaml`` and ``plan.json``; a resumed run is locked as it is.
    """
    from tunesmith.atomic import write_text
    from tunesmith.config import to_yaml
    from tunesmith.plan import write_plan

    if resumed is not None:
        return Claim(resumed, resumed.path, RunLock(resumed.path).acquire())
    claimed = claim_run_dir(target, pre.cfg.overwrite)
    try:
        write_text(claimed.run.config_path, to_yaml(pre.cfg))
        write_plan(pre.plan, claimed.run.plan_path)
    except BaseException:
        claimed.abandon()
        raise
    return claimed


def refuse_unsafe_target(path: Path) -> None:
    """``--overwrite`` never replaces ``/``, the home directory, the cwd or a parent of it."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if (
        resolved == Path(resolved.anchor)
        or resolved == Path.home().resolve()
        or (cwd == resolved or resolved in cwd.parents)
    ):
        raise ConfigError(
            "output",
            str(path),
            "a run directory of its own with --overwrite, not /, the home directory, the "
            "current directory or a parent of it",
        )


def claim_run_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Claim:
    """Claim ``path`` for a new run (see the module docstring for the rules).

    Raises:
        RunLocked: another process is writing the run at ``path``.
        UserInputError: ``path`` is not empty (and ``overwrite`` is off or it is not a run).
    """
    path = Path(path)
    if overwrite:
        refuse_unsafe_target(path)
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    if not run.entries():
        lock = RunLock(path).acquire()  # two runs started together: one of them loses here
        if not run.entries():
            return Claim(run, path, lock, created=not existed)
        lock.release()
    holder = RunLock.holder(path)
    if holder is not None:
        raise RunLocked(path, holder or None)
    if not overwrite:
        if run.is_run() and not run.is_finished():
            raise UserInputError(
                f"{path} holds an unfinished run; continue it with --resume {path}, or pass "
                "--overwrite to replace it"
            )
        raise UserInputError(
            f"output directory {path} is not empty; choose another --output or pass --overwrite"
        )
    foreign = run.foreign_entries()
    if not run.is_run() or foreign:
        what = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserInputError(
            f"--overwrite replaces only a tunesmith run directory, and {path} "
            + (f"holds files tunesmith did not write ({what})" if foreign else "has no config.yaml")
            + "; choose another --output"
        )
    old_lock = RunLock(path).acquire()  # nobody may start writing the old run meanwhile
    _remove_dead_staging(path)
    staging = path.with_name(f".{path.name}.new-{os.getpid()}")
    staging.mkdir()
    try:
        lock = RunLock(staging).acquire()
    except BaseException:
        old_lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Claim(RunDir(staging), path, lock, old_lock=old_lock)


def _remove_dead_staging(path: Path) -> None:
    """Staging directories left by a replacement that was killed before its swap."""
    for leftover in path.parent.glob(f".{path.name}.new-*"):
        if leftover.is_dir() and RunLock.holder(leftover) is None:
            shutil.rmtree(leftover, ignore_errors=True)
