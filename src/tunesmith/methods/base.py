"""The method registry: what every PEFT method must tell tunesmith about itself.

In the unified view every method adds a small function f(x) beside a frozen layer; methods
differ in f's *form*, its *position* (attention, FFN, keys/values, embeddings), whether it
is inserted *serially* or in *parallel*, and how its output is *composed* (add, scaled add,
gate). A :class:`MethodSpec` records exactly that, how to apply the method to a model, its
parameter formulas and every capability the rest of tunesmith asks about; the registry is the
only place that knows which methods exist.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
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


# Why prefix-style methods do not take a preference objective: the objectives read log-probs at
# the completion positions of two rows per example, and virtual tokens move those positions
# (prompt tuning returns logits for them) in ways the TRL parity tests do not cover.
VIRTUAL_TOKEN_PREFERENCE_REFUSAL = (
    "its virtual tokens shift every row's positions, so the chosen/rejected completion "
    "log-probs (and the adapter-off reference) are not verified for it; use a method that "
    "changes weights: the LoRA family, the bottleneck adapters, ia3 or full"
)


@dataclass(frozen=True)
class MethodSpec:
    """A registered PEFT method: everything the rest of tunesmith asks about it.

    Other modules never match method names; they read these fields (a new method is one module
    that registers one spec).

    Attributes:
        name: the ``--method`` value.
        summary: one line for ``tunesmith methods``.
        paper: citation (title, venue, arXiv id) and the equation implemented.
        view: its unified-view description.
        param_formula: human-readable trainable-parameter formula.
        apply: ``(model, MethodArgs) -> model`` making only the method's parameters trainable
            (returns a ``peft.PeftModel`` for PEFT-format methods).
        count_trainable: ``(model_config, MethodArgs) -> int``, the formula as code; the
            planner and ``tunesmith methods`` call it, tests pin it to the applied model.
        count_tensors: ``(model_config, MethodArgs) -> int``, how many trainable tensors the
            method creates (optimizers keep per-tensor state such as AdamW's ``step``).
        mergeable: whether ``merge`` can fold it into the base weights.
        quantized_base: whether the base is loaded in 4-bit (QLoRA): the loader quantizes it,
            the planner counts NF4 weights and the fp32 activations of k-bit training.
        peft_format: whether the result saves as a PEFT adapter directory.
        gradient_checkpointing: whether training may use activation checkpointing (prefix-style
            methods carry their keys/values in the KV cache, which checkpointed layers drop).
        trains_base_weights: the optimizer updates base weights in place (full, freeze): the
            trainer keeps fp32 master weights under autocast, and the planner counts their
            gradients, optimizer state and the activations their weight gradients need.
        trains_lm_head: the output projection trains too (full): the planner adds its gradient.
        targets_modules: the method sits at the modules ``--target`` names (the LoRA family);
            the others sit at positions fixed by the method, and ``--target`` is ignored.
        lora_branches: a low-rank branch beside each targeted linear saves its (dropout) input
            and its rank-r intermediate for the backward; the planner counts them.
        saved_per_output: what the forward saves beyond a LoRA branch per targeted linear,
            output feature and token, as ``(a, b)``: ``a`` times the compute dtype's bytes plus
            ``b`` bytes (DoRA: its base and fp32 branch outputs); the planner counts it.
        forward_transient: bytes alive during one targeted linear's forward, per ``d_in^2``
            and per ``d_in d_out`` of the largest target (DoRA: its weight norm's products);
            the planner adds it where that forward runs (the last block's, or the recompute).
        kv_prefix: virtual tokens or keys/values are put in front of every row (prefix,
            prompt, MAM), shared by all examples of a packed row: packing is refused.
        preference_refusal: why the preference objectives (DPO, ORPO, SimPO, KTO) are refused
            for this method, or None where they work (the reference is the model with the
            adapter off, or a frozen copy for methods that train base weights).
        autocast_adapters: the adapters run the plain ``B(A(dropout(x)))·scale`` forward (or
            DoRA's, whose weight norm peft then computes in the compute dtype), safe to compute
            in bf16 under autocast with peft's fp32 input cast off.
        default_lr: the peak learning rate ``compare`` uses when the user sets none (None: the
            config's ``lr`` default).
        cheaper_alternatives: ``(method name, relative step time)`` the planner's recommender
            may switch to when this method does not fit (e.g. full -> LoRA -> QLoRA).
        traced_as: the method whose builder the planner's traced step applies instead of this
            one (QLoRA needs a 4-bit base, which fake tensors cannot hold: traced as LoRA).
    """

    name: str
    summary: str
    paper: str
    view: UnifiedView
    param_formula: str
    apply: Callable[[nn.Module, MethodArgs], nn.Module]
    count_trainable: Callable[[Any, MethodArgs], int]
    count_tensors: Callable[[Any, MethodArgs], int]
    mergeable: bool = False
    quantized_base: bool = False
    peft_format: bool = True
    gradient_checkpointing: bool = True
    trains_base_weights: bool = False
    trains_lm_head: bool = False
    targets_modules: bool = False
    lora_branches: bool = False
    saved_per_output: tuple[int, int] = (0, 0)
    forward_transient: tuple[int, int] = (0, 0)
    kv_prefix: bool = False
    preference_refusal: str | None = None
    autocast_adapters: bool = False
    default_lr: float | None = None
    cheaper_alternatives: tuple[tuple[str, float], ...] = ()
    traced_as: str | None = None


_REGISTRY: dict[str, MethodSpec] = {}

# The built-in methods, each registered by the module of the same name; imported lazily so
# `tunesmith --help` stays fast.
BUILTIN_METHODS: tuple[str, ...] = (
    "lora", "qlora", "dora", "rslora", "houlsby", "pfeiffer", "parallel", "prefix", "prompt",
    "ia3", "mam", "freeze", "full",
)  # fmt: skip
METHOD_MODULES: tuple[str, ...] = tuple(f"tunesmith.methods.{name}" for name in BUILTIN_METHODS)


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; registering a name twice is a bug and fails loudly."""
    if spec.name in _REGISTRY:
        raise ValueError(f"PEFT method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec:
    """Remove a registered method (for tests and plugins that register one temporarily)."""
    return _REGISTRY.pop(name)


@contextlib.contextmanager
def registered(spec: MethodSpec) -> Iterator[MethodSpec]:
    """Register ``spec`` for the duration of a ``with`` block, then remove it."""
    load_all()  # the built-ins first, so the temporary method is listed after them
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def load_all() -> None:
    """Import every method module: fills the registry and registers tunesmith's own peft types
    (``BOTTLENECK``, ``MAM``), after which stock ``PeftModel.from_pretrained`` loads them."""
    for mod in METHOD_MODULES:
        importlib.import_module(mod)


def method_names() -> list[str]:
    """Registered method names, in ``tunesmith methods`` order."""
    load_all()
    return list(_REGISTRY)


def is_method(name: str) -> bool:
    """Whether ``name`` is a registered method; a built-in name answers without importing torch."""
    return name in _REGISTRY or name in BUILTIN_METHODS or name in method_names()


def get_method(name: str) -> MethodSpec:
    """The spec of ``--method name``; an unknown name is a :class:`ConfigError`."""
    if name in _REGISTRY:  # the planner's grid search asks thousands of times
        return _REGISTRY[name]
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("method", name, "one of " + ", ".join(_REGISTRY)) from None
