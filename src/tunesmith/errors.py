"""Error types that map to the CLI's exit codes.

Exit codes (DESIGN.md): 0 success, 1 the work failed (a check did not pass, training
diverged), 2 bad input or usage. Library calls raise these; the CLI turns them into one
readable line on stderr (a traceback only with ``--debug``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TunesmithError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UserInputError(TunesmithError):
    """Bad input: a missing file, a malformed record, an invalid config value. Exit 2."""

    exit_code = 2


class ConfigError(UserInputError):
    """A config key or flag has a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config '{key}': {value!r} is not allowed; expected {allowed}")


class DataError(UserInputError):
    """A data file cannot be used; names the file and, where known, the line and field."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file, self.line = file, line
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}")


class WorkFailed(TunesmithError):
    """The work ran but failed: a verification did not pass, training diverged. Exit 1."""

    exit_code = 1


_STEP_ATTR = "_tunesmith_step"


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Name the step a block performs; an exception escaping it is tagged with the name.

    The innermost step wins, so the CLI's safety net can say *where* an unexpected error
    happened ("tunesmith train: failed while loading the model: ...").
    """
    try:
        yield
    except BaseException as exc:
        if not hasattr(exc, _STEP_ATTR):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, _STEP_ATTR, name)
        raise


def failed_step(exc: BaseException) -> str | None:
    """The step an exception escaped from (see :func:`step`), if any."""
    return getattr(exc, _STEP_ATTR, None)
