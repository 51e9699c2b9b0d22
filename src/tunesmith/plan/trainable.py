"""Trainable-parameter counts per PEFT method, from the config alone.

A method registered in :mod:`tunesmith.methods` answers with its own ``count_trainable``
(which the methods' tests pin against the applied model); a method not registered yet falls
back to the formula here, each taken from its paper or from peft's implementation.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.methods.base import MethodArgs
from tunesmith.plan.shapes import ModelShape

METHODS = (
    "lora", "qlora", "dora", "rslora", "houlsby", "pfeiffer", "parallel", "prefix", "prompt",
    "ia3", "mam", "freeze", "full",
)  # fmt: skip

# Methods whose base weights are frozen and whose trainable tensors peft keeps in fp32
# (peft's ``autocast_adapter_dtype=True`` upcasts adapter weights of 16-bit models).
FULL_WEIGHT_METHODS = ("full", "freeze")


def _lora(cfg: Any, args: MethodArgs) -> int:
    from tunesmith.methods.lora import count_lora

    return count_lora(cfg, args)


def _out_features(cfg: Any, args: MethodArgs) -> int:
    from tunesmith.methods.lora import linear_shapes

    return sum(o for _, o in linear_shapes(cfg, args.target))


def _adapter(shape: ModelShape, m: int) -> int:
    # Bottleneck adapter (Houlsby et al. 2019, arXiv:1902.00751): down h->m and up m->h,
    # both with bias.
    return 2 * shape.hidden * m + m + shape.hidden


def _prefix(shape: ModelShape, n: int) -> int:
    # Prefix tuning (Li & Liang 2021, arXiv:2101.00190) as peft stores it without the
    # reparametrization MLP: n virtual keys and values per layer; for GQA peft sizes them to
    # kv_heads * head_dim (peft/utils/other.py, _prepare_prompt_learning_config).
    return n * shape.layers * 2 * shape.kv_heads * shape.head_dim


def _ia3(shape: ModelShape) -> int:
    # (IA)^3 (Liu et al. 2022, arXiv:2205.05638) with peft's Llama defaults: learned vectors
    # rescaling k_proj and v_proj outputs and the input of down_proj.
    return shape.layers * (2 * shape.kv_heads * shape.head_dim + shape.intermediate)


def _per_layer(shape: ModelShape) -> int:
    return (shape.linear_params + shape.other_params - shape.hidden) // shape.layers


def fallback_count(method: str, cfg: Any, shape: ModelShape, args: MethodArgs) -> int:
    """The trainable-parameter formula for ``method`` (used when it is not registered)."""
    if method in ("lora", "qlora", "rslora"):
        # rsLoRA (Kalajdzievski 2023) changes only the scale alpha/sqrt(r), not the count.
        return _lora(cfg, args)
    if method == "dora":
        # DoRA (Liu et al. 2024, arXiv:2402.09353): LoRA plus a magnitude vector per output.
        return _lora(cfg, args) + _out_features(cfg, args)
    if method == "houlsby":
        return shape.layers * 2 * _adapter(shape, args.bottleneck)  # after attention and FFN
    if method in ("pfeiffer", "parallel"):
        # Pfeiffer et al. 2021 (arXiv:2005.00247): one adapter after the FFN; the parallel
        # adapter (He et al. 2022, arXiv:2110.04366) sits beside the FFN with the same shapes.
        return shape.layers * _adapter(shape, args.bottleneck)
    if method == "prefix":
        return _prefix(shape, args.num_virtual_tokens)
    if method == "prompt":
        # Prompt tuning (Lester et al. 2021, arXiv:2104.08691): n soft tokens of width h.
        return args.num_virtual_tokens * shape.hidden
    if method == "ia3":
        return _ia3(shape)
    if method == "mam":
        # MAM adapter (He et al. 2022): prefix tuning at attention + a parallel FFN adapter.
        return _prefix(shape, args.num_virtual_tokens) + shape.layers * _adapter(
            shape, args.bottleneck
        )
    if method == "freeze":
        return min(args.freeze_top_k, shape.layers) * _per_layer(shape)
    if method == "full":
        return shape.total_params
    raise ConfigError("method", method, "one of " + ", ".join(METHODS))


def count_trainable(method: str, cfg: Any, shape: ModelShape, args: MethodArgs) -> int:
    """Trainable parameters of ``method`` on this architecture.

    Uses the registered method's ``count_trainable`` when there is one (``qlora`` counts as
    ``lora``), else :func:`fallback_count`.
    """
    if method not in METHODS:
        raise ConfigError("method", method, "one of " + ", ".join(METHODS))
    from tunesmith.methods.base import get_method, method_names

    if method in method_names():
        try:
            return int(get_method(method).count_trainable(cfg, args))
        except (ValueError, AttributeError, TypeError):
            pass  # an architecture the method's formula does not know: use ours
    return fallback_count(method, cfg, shape, args)


def count_tensors(method: str, shape: ModelShape, args: MethodArgs) -> int:
    """How many trainable tensors ``method`` creates (optimizers keep per-tensor scalars)."""
    if method in ("lora", "qlora", "rslora"):
        return 2 * len(args.target) * shape.layers  # lora_A and lora_B per target
    if method == "dora":
        return 3 * len(args.target) * shape.layers  # + the magnitude vector
    norms = 4 if shape.model_type == "gemma2" else 2
    biases = 3 if shape.model_type == "qwen2" else 0
    per_layer = 7 + norms + biases  # q, k, v, o, gate, up, down + norms + q/k/v biases
    if method == "full":
        return shape.layers * per_layer + 2 + (0 if shape.tied else 1)
    if method == "freeze":
        return min(args.freeze_top_k, shape.layers) * per_layer
    if method in ("houlsby",):
        return shape.layers * 2 * 4
    if method in ("pfeiffer", "parallel"):
        return shape.layers * 4
    if method == "mam":
        return shape.layers * 4 + 1
    if method == "ia3":
        return shape.layers * 3
    return 1  # prefix / prompt: one embedding table
