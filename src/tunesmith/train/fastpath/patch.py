"""What one fast path did to a model, and how to take it back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def _nothing() -> None:
    return None


@dataclass
class Patch:
    """The result of installing one fast path into a model.

    Attributes:
        count: How many modules (or switches) the path changed; 0 when it did not apply.
        undo: Restores exactly what the path changed (classes, modules, settings).
        skipped: Why the path does not apply to this model; None when it applied.
        expected: Whether ``skipped`` is a deliberate choice (e.g. no dropout to replace)
            rather than a model the path does not know; it sets the log level.
    """

    count: int = 0
    undo: Callable[[], None] = field(default=_nothing)
    skipped: str | None = None
    expected: bool = True


def skipped(reason: str, *, expected: bool = True) -> Patch:
    """A path that changed nothing, and why."""
    return Patch(skipped=reason, expected=expected)
