"""The exit status of ``--nproc N``: the failing rank's own, not torchrun's generic 1.

torchrun exits 1 whenever a rank fails, so a user error on a rank (exit 2: a bad record in
the data, a config the engine refuses) would look like a crash to scripts that tell the two
apart. The ``--nproc`` parent names a directory in :data:`ENV`; a rank that stops with an
error writes its status there (:func:`note`), and the parent returns the lowest failing
rank's status (:func:`collect`). Under a plain ``torchrun`` or ``accelerate launch`` nothing
is written and their own status stands.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ENV = "TUNESMITH_RANK_EXIT_DIR"


def note(code: int) -> None:
    """Record this rank's non-zero exit status for the ``--nproc`` parent (if there is one)."""
    folder = os.environ.get(ENV)
    if not folder or code == 0:
        return
    rank = os.environ.get("RANK", "0")
    # On failure the parent falls back to torchrun's status.
    with contextlib.suppress(OSError, ValueError):
        (Path(folder) / f"rank-{int(rank)}").write_text(str(int(code)))


def collect(folder: str | Path, launcher_status: int) -> int:
    """The status to exit with: the lowest failing rank's, else the launcher's."""
    if launcher_status == 0:
        return 0
    codes = {}
    for path in Path(folder).glob("rank-*"):
        try:
            codes[int(path.name.split("-", 1)[1])] = int(path.read_text())
        except (OSError, ValueError):
            continue
    return codes[min(codes)] if codes else launcher_status
