"""The method registry: what every PEFT method must tell tunesmith about itself.

In the unified view every method adds a small function f(x) beside a frozen layer; methods
differ in f's *form*, its *position* (attention, FFN, keys/values, embeddings), whether it
is inserted *serially* or in *parallel*, and how its output is *composed* (add, scaled add,
gate). A :class:`MethodSpec` records exactly that plus how to apply the method to a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class UnifiedView:
    form: str  # the function f, e.g. "B·A·x" or "W_up·ReLU(W_down·h)"
    position: str  # attention | ffn | keys-values | embeddings | all
    insertion: str  # serial | parallel
    composition: str  # add | scaled add | gate | rescale


@dataclass(frozen=True)
class MethodArgs:
    """Plain arguments a builder needs; configs are turned into this, never passed in."""

    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.05
    target: tuple[str, ...] = ("q_proj", "v_proj")  # resolved module names
    num_virtual_tokens: int = 20  # prefix / prompt tuning
    bottleneck: int = 64  # bottleneck adapters
    scale: float = 4.0  # parallel adapter scale s (He et al. use 4)
    freeze_top_k: int = 2  # `freeze`: train this many top blocks
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered PEFT method.

    Attributes:
        name: the ``--method`` value.
        summary: one line for ``tunesmith methods``.
        paper: citation (title, venue, arXiv id) and the equation implemented.
        view: its unified-view description.
        param_formula: human-readable trainable-parameter formula.
        apply: ``(model, MethodArgs) -> model`` making only the method's parameters trainable
            (returns a ``peft.PeftModel`` for PEFT-format methods).
        count_trainable: ``(model_config, MethodArgs) -> int``, the formula as code; tests
            check it against the applied model.
        mergeable: whether ``merge`` can fold it into the base weights.
        quantized_base: whether the base is loaded in 4-bit (QLoRA).
        peft_format: whether the result saves as a PEFT adapter directory.
        gradient_checkpointing: whether training may use activation checkpointing (prefix-style
            methods carry their keys/values in the KV cache, which checkpointed layers drop).
    """

    name: str
    summary: str
    paper: str
    view: UnifiedView
    param_formula: str
    apply: Callable[[nn.Module, MethodArgs], nn.Module]
    count_trainable: Callable[[Any, MethodArgs], int]
    mergeable: bool = False
    quantized_base: bool = False
    peft_format: bool = True
    gradient_checkpointing: bool = True


_REGISTRY: dict[str, MethodSpec] = {}

# Modules that register methods; imported lazily so `tunesmith --help` stays fast.
METHOD_MODULES: tuple[str, ...] = tuple(
    f"tunesmith.methods.{name}"
    for name in (
        "lora", "qlora", "dora", "rslora", "houlsby", "pfeiffer", "parallel", "prefix", "prompt",
        "ia3", "mam", "freeze", "full",
    )
)  # fmt: skip


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; registering a name twice is a bug and fails loudly."""
    if spec.name in _REGISTRY:
        raise ValueError(f"PEFT method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def load_all() -> None:
    """Import every method module: fills the registry and registers tunesmith's own peft types
    (``BOTTLENECK``, ``MAM``), after which stock ``PeftModel.from_pretrained`` loads them."""
    for mod in METHOD_MODULES:
        importlib.import_module(mod)


def method_names() -> list[str]:
    """Registered method names, in ``tunesmith methods`` order."""
    load_all()
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The spec of ``--method name``; an unknown name is a :class:`ConfigError`."""
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("method", name, "one of " + ", ".join(_REGISTRY)) from None
