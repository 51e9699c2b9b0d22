"""Register a new PEFT type with peft, so its adapters save and load as any built-in one.

peft's ``register_peft_method`` fills the config/tuner/prefix tables, but it requires the name to
be a member of the closed ``PeftType`` enum (the message says to add an entry there). A package
outside peft can only satisfy that by adding the member at runtime. We do exactly that and
nothing more: the new member is a plain ``str`` enum member like the built-in ones, existing
members are never touched, and the call is idempotent so re-imports are harmless.
"""

from __future__ import annotations

from typing import Any


def _add_peft_type(name: str) -> Any:
    """Return ``PeftType[name]``, creating the member when peft does not define it."""
    from peft.utils.peft_types import PeftType

    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    # Class attribute first: EnumType.__setattr__ refuses names already in _member_map_.
    setattr(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


def register_peft_type(name: str, *, config_cls: type, model_cls: type, prefix: str) -> Any:
    """Make ``name`` a peft method (``PeftType.<NAME>``) backed by our config and tuner classes.

    Args:
        name: lower-case method name, e.g. ``"bottleneck"``; the peft type is its upper case.
        config_cls: the ``PeftConfig`` dataclass of the method.
        model_cls: the ``BaseTuner`` subclass that injects the method.
        prefix: unique parameter-name prefix (``model_cls.prefix``).

    Returns:
        The ``PeftType`` member.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    member = _add_peft_type(name.upper())
    if PEFT_TYPE_TO_TUNER_MAPPING.get(member) is model_cls:
        return member  # already registered by an earlier import of the same class
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    return member
