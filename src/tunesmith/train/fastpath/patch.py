"""What one fast path did to a model, and how to take it back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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


def class_swaps(changed: list[tuple[object, type]], refused: list[str], *, none: str) -> Patch:
    """The patch of a path that gave modules a subclass of their own class.

    Args:
        changed: ``(module, its original class)`` for every module changed; ``undo`` gives each
            its class back.
        refused: Why each candidate class was left alone (a model the path does not know).
        none: Why nothing applied where the model had no candidate at all.
    """

    def undo() -> None:
        for module, cls in changed:
            module.__class__ = cls

    if refused:
        return Patch(len(changed), undo, "; ".join(refused), expected=False)
    if not changed:
        return skipped(none)
    return Patch(len(changed), undo)


def swap_probed_classes(
    candidates: dict[type, list],
    why_not: Callable[[object], str | None],
    fast_class: Callable[[type], type],
    *,
    none: str,
) -> Patch:
    """Probe one module of each candidate class (``why_not``: why its class does not compute
    what the path replaces, None when it does) and give every module of a passing class
    ``fast_class(cls)``; the patch says which classes failed and why."""
    changed: list[tuple[object, type]] = []
    refused: list[str] = []
    for cls, modules in candidates.items():
        why = why_not(modules[0])
        if why is not None:
            refused.append(f"{cls.__name__}: {why}")
            continue
        for module in modules:
            module.__class__ = fast_class(cls)
            changed.append((module, cls))
    return class_swaps(changed, refused, none=none)


def fast_subclass(cls: type, forward: Callable, namespace: dict[str, Any]) -> type:
    """A subclass of ``cls`` named ``Fast<cls>`` whose ``forward`` is ``forward``, so
    ``isinstance`` checks keep working. It is entered in ``namespace`` (the calling module's
    ``globals()``) under that name: a model pickled in this process (``torch.save`` of the
    module) loads again here; tunesmith itself saves state dicts, which never name the class."""
    name = f"Fast{cls.__name__}"
    fast = type(name, (cls,), {"forward": forward, "__module__": namespace["__name__"]})
    namespace[name] = fast
    return fast
