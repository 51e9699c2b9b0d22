"""Atomic file and directory writes: write to a temp path beside the target, then rename.

A killed process therefore leaves either the old file or the new one, never half of one.
``os.replace`` is atomic on POSIX when source and target are on the same filesystem, which
a sibling temp path guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public_mode(path: Path, directory: bool) -> None:
    # mkstemp/mkdtemp create 0600/0700 entries; give outputs the permissions an ordinary
    # open()/mkdir() would, so exported models are not private to the writing user.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def _disk_full_is_a_failure(target: Path) -> Iterator[None]:
    """A full disk mid-write: one clear failure (the temp path is removed by the caller)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        from tunesmith.errors import WorkFailed

        raise WorkFailed(
            f"the disk filled up while writing {target}; nothing was written there. "
            "Free some space and run again"
        ) from exc


def _fsync_dir(path: Path) -> None:
    # Persist the rename itself; without this a power cut can lose a completed rename.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_file_target(target: str | os.PathLike[str], key: str = "out") -> None:
    """Refuse, before any work, an output file path that can never be written.

    Raises:
        ConfigError: the path is an existing directory, or lies under a file.
    """
    from tunesmith.errors import ConfigError

    path = Path(target)
    if path.is_dir():
        raise ConfigError(key, str(target), "a file path; this is an existing directory")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(key, str(target), f"a path under a directory; {parent} is a file")
            if not os.access(parent, os.W_OK):
                raise ConfigError(key, str(target), f"a writable location; {parent} is read-only")
            return


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp file path; on success it is renamed onto ``target``, on error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _disk_full_is_a_failure(target):
            yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _public_mode(tmp_path, directory=False)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON."""
    return write_text(target, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(target: str | os.PathLike[str], rows: Any) -> Path:
    """Atomically write an iterable of JSON-serializable rows, one per line."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces ``target`` as a whole.

    Used for adapters, checkpoints and merged models: a reader never sees a directory
    with some files missing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with _disk_full_is_a_failure(target):
            yield tmp
        _public_mode(tmp, directory=True)
        if target.exists():
            if not overwrite:
                raise FileExistsError(target)
            # Two renames keep the window in which neither version exists as short as possible.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
