"""The exit status of ``--nproc N``: the failing rank's own, not torchrun's generic 1.

torchrun exits 1 whenever a rank fails, so a user error on a rank (exit 2: a bad record in
the data, a config the engine refuses) would look like a crash to scripts that tell the two
apart. The ``--nproc`` parent names a directory in :data:`ENV`; a rank that stops with an
error writes its status there (:func:`note`), and the parent returns the lowest failing
rank's status (:func:`collect`). Under a plain ``torchrun`` or ``accelerate launch`` nothing
is written and their own status stands.

A rank also leaves without the interpreter's shutdown (:func:`exit_process`). A gloo worker
thread can still be dropping the last reference to a tensor Python owns while the interpreter
finalizes; the GIL it then asks for stops it with ``pthread_exit``, whose unwinding through
C++ ``noexcept`` frames calls ``std::terminate`` (SIGABRT), after a run that had finished and
saved everything. It happened once in CI and once in ~90 two-rank DeepSpeed runs pinned to
one busy core here (pytorch/pytorch#179291 describes the race; it was closed unfixed).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn

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


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; a rank of a distributed run skips the interpreter's shutdown.

    Everything a run writes is closed (and renamed into place) before the command returns,
    so all that is left to do is flush the console and the log handlers. A single process
    exits normally.
    """
    try:  # not context.world_size_from_env: that would import torch into a plain `--help`
        ranks = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        ranks = 1
    if ranks <= 1:
        sys.exit(code)
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)
