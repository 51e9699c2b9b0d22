"""What a merge or export starts from: a run directory or a PEFT adapter directory.

:func:`~tunesmith.models.artifact.locate` finds and validates it; here, before any output is
created, merge and export also insist on an adapter with a known base, so bad input fails with
exit 2 and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import UserInputError
from tunesmith.models.artifact import ADAPTER_CONFIG, Artifact, locate


def resolve_source(path: str | Path) -> Artifact:
    """Validate ``path`` as a run or adapter directory whose adapter names its base.

    Raises:
        UserInputError: the path is missing, is not a run/adapter directory, its adapter
            config or weights are missing or unreadable, or nothing names the base model.
    """
    art = locate(path)
    if art.kind != "adapter":
        raise UserInputError(
            f"{path}: not a run directory (no adapter/) nor a PEFT adapter directory "
            f"(no {ADAPTER_CONFIG}); a {art.kind} checkpoint is already a whole model"
        )
    if not art.base_model:
        raise UserInputError(
            f"{art.dir / ADAPTER_CONFIG}: no base_model_name_or_path; cannot tell the base model"
        )
    return art


def require_mergeable(source: Artifact) -> None:
    """Refuse methods whose parameters do not fold into the base weights."""
    if not source.mergeable:
        raise UserInputError(
            f"method {source.method!r} ({source.peft_type}) cannot be merged into the base weights: "
            "its extra modules or virtual tokens stay separate at inference. "
            f"Export the adapter instead: tunesmith export {source.path} --format peft -o OUT"
        )
