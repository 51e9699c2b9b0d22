"""Free disk space, checked before a large write instead of discovered half-way through it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith.errors import WorkFailed

# Bytes kept free on disk beyond a save's own size (filesystem metadata, temp files, logs).
DISK_MARGIN_BYTES = 64 * 1024**2


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (outputs are made on demand)."""
    return next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(Path(path))).free


def check_free_disk(path: Path, needed_bytes: int, what: str, advice: str = "") -> None:
    """Refuse a write that would fill the disk, before writing a byte of it.

    Raises:
        WorkFailed: fewer than ``needed_bytes`` plus a margin are free at ``path``.
    """
    free = free_disk_bytes(Path(path))
    if free < needed_bytes + DISK_MARGIN_BYTES:
        raise WorkFailed(
            f"not enough free disk to save the {what} in {path}: it needs about "
            f"{(needed_bytes + DISK_MARGIN_BYTES) / 1024**2:.0f} MiB, {free / 1024**2:.0f} MiB "
            "are free. " + (advice or "Free some space and run again")
        )
