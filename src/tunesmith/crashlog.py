"""The CLI's safety net: an unexpected exception becomes one line and a saved traceback.

Mapped errors (:class:`~tunesmith.errors.TunesmithError`) are the expected way a command
fails; this is for everything else, so that a user never faces a wall of traceback and a
bug report still has the whole story.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
import traceback
from pathlib import Path

from tunesmith.errors import failed_step


def log_dir() -> Path:
    """``<tunesmith cache>/logs`` (``TUNESMITH_CACHE`` or the user cache dir)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("TUNESMITH_CACHE", user_cache_dir("tunesmith"))) / "logs"


def save_traceback(command: str, exc: BaseException) -> Path | None:
    """Write the traceback to a new file under :func:`log_dir` (or the temp dir); its path."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def describe(command: str, exc: BaseException) -> str:
    """One line: the command, the step that failed, what happened, where the traceback is."""
    where = failed_step(exc)
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        what = f"no space left on the device ({exc.filename or text})"
    else:
        what = f"unexpected {type(exc).__name__}" + (f": {text}" if text else "")
    log = save_traceback(command, exc)
    saved = f"; the traceback is in {log}" if log else ""
    step = f" while {where}" if where else ""
    return f"tunesmith {command}: failed{step}: {what}{saved} (--debug prints it)"
