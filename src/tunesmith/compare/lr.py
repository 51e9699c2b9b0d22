"""Per-method default learning rates, used only when the user did not choose ``--lr``.

Methods differ in how many parameters they train and how those parameters enter the network,
so one learning rate cannot serve them all: a shared 2e-4 leaves prompt tuning barely moving
and would wreck full fine-tuning at 2e-3. Each method states its own starting point
(``MethodSpec.default_lr``, with its source beside it in the method's module).
"""

from __future__ import annotations

from tunesmith.config import TrainConfig


def lr_for(method: str, cfg: TrainConfig) -> float:
    """The learning rate ``method`` trains with: the user's ``lr`` if they set one, else the method's.

    Args:
        method: A registered method name.
        cfg: The shared config; ``lr`` counts as set when it came from a YAML file, a flag or a
            keyword (pydantic's ``model_fields_set``), not when it is the field default.

    Returns:
        The peak learning rate: the user's, else ``MethodSpec.default_lr``, else ``cfg.lr``.
    """
    from tunesmith.methods import get_method

    default = get_method(method).default_lr
    if "lr" in cfg.model_fields_set or default is None:
        return cfg.lr
    return default
