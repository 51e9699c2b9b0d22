"""``--init-from RUN_DIR``: continue training an earlier run's adapter (SFT, then DPO).

The earlier adapter is loaded trainable onto the same base and keeps training: the result is
one adapter on the original base (neither merged into the base nor stacked under a second
adapter), so every loader, ``merge`` and ``serve`` take it as they take any run. The
preference objectives' reference is then that starting adapter, scored once before the first
step (:class:`~tunesmith.objectives.ReferenceCache`).
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import UserInputError


def check_init_from(init_from: str | Path, spec, base_model: str):
    """The located adapter of ``init_from``, checked before any weights load.

    Raises:
        UserInputError: ``init_from`` is not an adapter run, or was trained with another
            method or on another base.
    """
    from tunesmith.models import locate

    art = locate(init_from)
    if art.kind != "adapter":
        raise UserInputError(
            f"--init-from {init_from} is a complete model ({art.kind}): pass it as --model instead"
        )
    if art.method and art.method != spec.name:
        raise UserInputError(
            f"--init-from {init_from} trained --method {art.method}; continue it with that method"
        )
    if art.base_model and art.base_model != base_model:
        raise UserInputError(
            f"--init-from {init_from} was trained on {art.base_model!r}, not --model {base_model!r}"
        )
    return art


def continue_adapter(model, init_from: str | Path, spec, base_model: str):
    """``model`` (the base) with the adapter of ``init_from`` attached, trainable.

    Raises:
        UserInputError: see :func:`check_init_from`; or the adapter does not load onto this base.
    """
    from peft import PeftModel

    from tunesmith.methods import load_all
    from tunesmith.models.adapted import adapter_load_errors

    art = check_init_from(init_from, spec, base_model)
    load_all()  # tunesmith's own peft types (bottleneck adapters, MAM)
    with adapter_load_errors(art.dir):
        return PeftModel.from_pretrained(model, str(art.dir), is_trainable=True)
