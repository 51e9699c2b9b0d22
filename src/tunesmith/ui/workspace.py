"""The workspace: the one folder the UI may read and write, and its run directories.

Every path a request names is relative to the workspace; an absolute path, a ``..`` part or a
symlink that leads outside is refused, so the browser can never reach other files.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir

UI_DIR = ".tunesmith-ui"  # the UI's own files: launch configs, uploads, logs, scratch output
RUNS = "runs"  # where `tunesmith train` writes runs by default (runs/<name>/)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


class Workspace:
    """Paths inside one root folder; the UI's files live in ``<root>/.tunesmith-ui``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def resolve(self, rel: str) -> Path:
        """The absolute path of ``rel`` inside the workspace.

        Raises:
            UserInputError: ``rel`` is empty, absolute, has a ``..`` part or resolves outside.
        """
        if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
            raise UserInputError("a path inside the workspace is required")
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or rel.startswith("~") or ":" in pure.parts[0]:
            raise UserInputError(
                f"{rel}: absolute paths are refused; give one inside the workspace"
            )
        if ".." in pure.parts:
            raise UserInputError(f"{rel}: '..' is refused; give a path inside the workspace")
        path = (self.root / pure).resolve()
        if path != self.root and self.root not in path.parents:
            raise UserInputError(f"{rel}: leads outside the workspace")
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    @property
    def ui_dir(self) -> Path:
        return self.root / UI_DIR

    def private(self, *parts: str) -> Path:
        """A folder of the UI's own (created on first use)."""
        path = self.ui_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, name: str) -> RunDir:
        """The run directory ``name`` (a path relative to the workspace) that must exist."""
        path = self.resolve(name)
        run = RunDir(path)
        if not run.is_run():
            raise UserInputError(f"{name}: not a run directory of this workspace")
        return run

    def runs(self) -> list[RunDir]:
        """Run directories up to two levels below the root (``runs/<name>/`` and ``<name>/``),
        newest first."""
        found: list[RunDir] = []
        for pattern in ("*/" + RunDir.CONFIG, "*/*/" + RunDir.CONFIG):
            for cfg in self.root.glob(pattern):
                if UI_DIR not in cfg.parts and not any(p.startswith(".") for p in cfg.parts[-3:-1]):
                    found.append(RunDir(cfg.parent))
        found.sort(key=lambda r: r.config_path.stat().st_mtime, reverse=True)
        return found

    def data_files(self) -> list[str]:
        """Data files of the workspace (relative paths), outside run directories."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames
                if not d.startswith(".") and not (here / d / RunDir.CONFIG).is_file()
            ]  # fmt: skip
            if len(here.relative_to(self.root).parts) > 3:
                dirnames[:] = []
            out += [self.relative(here / f) for f in filenames if f.endswith(DATA_SUFFIXES)]
        return sorted(out)[:500]
