"""Target-module presets per architecture family (`--target`).

Presets name *roles* (attention query/value, all attention, MLP, every linear layer); each
family maps roles to its own module names, so `--target attn-qv` means q_proj/v_proj on
Llama and c_attn on GPT-2.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError

_LLAMA_LIKE = {
    "attn-qv": ("q_proj", "v_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
_LLAMA_LIKE["all-linear"] = _LLAMA_LIKE["attn"] + _LLAMA_LIKE["mlp"]

_GPT2 = {
    "attn-qv": ("c_attn",),
    "attn": ("c_attn", "c_proj"),
    "mlp": ("c_fc", "mlp.c_proj"),
    "all-linear": ("c_attn", "c_proj", "c_fc"),
}

# model_type -> role table. Llama, Qwen2, Mistral and Gemma share module names.
FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gpt2": _GPT2,
}
PRESETS = ("attn-qv", "attn", "mlp", "all-linear")


def resolve_targets(
    target: str | list[str] | tuple[str, ...], model_config: Any
) -> tuple[str, ...]:
    """Turn a preset name or an explicit list into module names for this architecture."""
    if isinstance(target, (list, tuple)):
        names = tuple(target)
    elif target in PRESETS:
        model_type = getattr(model_config, "model_type", "")
        table = FAMILIES.get(model_type, _LLAMA_LIKE)
        names = table[target]
    else:
        names = tuple(t.strip() for t in str(target).split(",") if t.strip())
    if not names:
        raise ConfigError("target", target, "a preset (" + ", ".join(PRESETS) + ") or module names")
    return names


def check_targets_exist(model: Any, names: tuple[str, ...]) -> None:
    """Fail before training when a target module is absent from the model."""
    module_names = [n for n, _ in model.named_modules()]
    missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        leaf = sorted({n.rsplit(".", 1)[-1] for n in module_names if "." in n})
        raise ConfigError(
            "target",
            ",".join(missing),
            "module names present in the model: " + ", ".join(leaf[:40]),
        )


# Fixed insertion points of the methods that are *defined* by where they sit (bottleneck
# adapters, (IA)^3), as opposed to the LoRA family whose targets `--target` chooses.
_LLAMA_POSITIONS = {
    "attn-out": ("o_proj",),  # attention output projection
    "ffn-out": ("down_proj",),  # FFN output projection
    "ffn": ("mlp",),  # the whole FFN block
    "ia3": ("k_proj", "v_proj", "down_proj"),  # keys, values, FFN inner activation
    "ia3-ff": ("down_proj",),  # of those, the ones (IA)^3 scales at their input
}
_GPT2_POSITIONS = {
    "attn-out": ("attn.c_proj",),
    "ffn-out": ("mlp.c_proj",),
    "ffn": ("mlp",),
    "ia3": ("c_attn", "mlp.c_proj"),
    "ia3-ff": ("mlp.c_proj",),
}


def position_modules(role: str, model_config: Any) -> tuple[str, ...]:
    """Module names of a fixed insertion point (``attn-out``, ``ffn-out``, ``ffn``, ``ia3``...)."""
    model_type = getattr(model_config, "model_type", "")
    table = _GPT2_POSITIONS if model_type == "gpt2" else _LLAMA_POSITIONS
    return table[role]
