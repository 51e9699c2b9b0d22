"""Architecture configs the planner knows offline, and resolution of ``--model`` to a config.

Values are copied from each model's published ``config.json`` on the Hugging Face hub
(``https://huggingface.co/<id>/blob/main/config.json``); only the fields that decide memory
are kept. ``--model`` may also be a local ``config.json``, a local model directory or a hub id
(read from the local cache; with ``HF_HUB_OFFLINE=1`` an uncached id fails with a clear error).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError


def _llama(h, inter, layers, heads, kv, vocab, tied=False, **kw):
    return dict(
        model_type="llama", hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
        tie_word_embeddings=tied, **kw,
    )  # fmt: skip


def _qwen2(h, inter, layers, heads, kv, vocab, tied):
    # Qwen2.5 has q/k/v biases (the Qwen2 architecture always does).
    return dict(_llama(h, inter, layers, heads, kv, vocab, tied), model_type="qwen2")


def _gemma2(h, inter, layers, heads, kv, head_dim):
    # Gemma-2: head_dim is set explicitly (not hidden/heads), vocab 256000, tied embeddings.
    return dict(
        _llama(h, inter, layers, heads, kv, 256000, True),
        model_type="gemma2", head_dim=head_dim,
    )  # fmt: skip


# name -> (hub id it was read from, memory-relevant config fields)
BUNDLED: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", _llama(4096, 11008, 32, 32, 32, 32000)),
    "llama-2-13b": ("meta-llama/Llama-2-13b-hf", _llama(5120, 13824, 40, 40, 40, 32000)),
    "llama-2-70b": ("meta-llama/Llama-2-70b-hf", _llama(8192, 28672, 80, 64, 8, 32000)),
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B", _llama(4096, 14336, 32, 32, 8, 128256)),
    "llama-3.1-70b": ("meta-llama/Llama-3.1-70B", _llama(8192, 28672, 80, 64, 8, 128256)),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", _qwen2(896, 4864, 24, 14, 2, 151936, True)),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B", _qwen2(1536, 8960, 28, 12, 2, 151936, True)),
    "qwen2.5-3b": ("Qwen/Qwen2.5-3B", _qwen2(2048, 11008, 36, 16, 2, 151936, True)),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", _qwen2(3584, 18944, 28, 28, 4, 152064, False)),
    "qwen2.5-14b": ("Qwen/Qwen2.5-14B", _qwen2(5120, 13824, 48, 40, 8, 152064, False)),
    "qwen2.5-32b": ("Qwen/Qwen2.5-32B", _qwen2(5120, 27648, 64, 40, 8, 152064, False)),
    "qwen2.5-72b": ("Qwen/Qwen2.5-72B", _qwen2(8192, 29568, 80, 64, 8, 152064, False)),
    "mistral-7b": (
        "mistralai/Mistral-7B-v0.1",
        dict(_llama(4096, 14336, 32, 32, 8, 32000), model_type="mistral"),
    ),
    "codellama-13b": ("codellama/CodeLlama-13b-hf", _llama(5120, 13824, 40, 40, 40, 32016)),
    "gemma-2-2b": ("google/gemma-2-2b", _gemma2(2304, 9216, 26, 8, 4, 256)),
    "gemma-2-9b": ("google/gemma-2-9b", _gemma2(3584, 14336, 42, 16, 8, 256)),
    "gemma-2-27b": ("google/gemma-2-27b", _gemma2(4608, 36864, 46, 32, 16, 128)),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M", _llama(576, 1536, 30, 9, 3, 49152, True)),
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M", _llama(960, 2560, 32, 15, 5, 49152, True)),
    "smollm2-1.7b": ("HuggingFaceTB/SmolLM2-1.7B", _llama(2048, 8192, 24, 32, 32, 49152, True)),
}

# The embedded default model (DESIGN.md) is SmolLM2-135M-Instruct: same shapes as the base.
ALIASES: dict[str, str] = {"embedded": "smollm2-135m"}


def _bundled_key(model: str) -> str | None:
    """Match a bundled name, an alias or the hub id (with or without -Instruct/-hf suffixes)."""
    low = model.lower()
    if low in ALIASES:
        return ALIASES[low]
    if low in BUNDLED:
        return low
    for key, (hub_id, _) in BUNDLED.items():
        base = hub_id.lower().removesuffix("-hf")
        if low in (hub_id.lower(), base, base + "-instruct", base + "-instruct-hf", base + "-it"):
            return key
        if low.split("/")[-1] in (base.split("/")[-1] + "-instruct", base.split("/")[-1] + "-it"):
            return key
    return None


def bundled_config(name: str):
    """The ``transformers`` config object for a bundled name (see :data:`BUNDLED`)."""
    from transformers import AutoConfig

    fields = dict(BUNDLED[name][1])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def load_model_config(model: str):
    """Resolve ``--model`` to a ``transformers`` config without loading any weights.

    Args:
        model: a bundled name or alias (``embedded``, ``llama-2-13b``), a hub id, a local
            ``config.json`` or a local model directory.

    Returns:
        A ``transformers.PretrainedConfig`` (for multimodal wrappers, the text config).

    Raises:
        UserInputError: the model is unknown, not cached offline, or its config is unreadable.
    """
    from transformers import AutoConfig

    key = _bundled_key(model)
    if key is not None:
        return bundled_config(key)
    path = Path(model).expanduser()
    try:
        if path.is_file() and path.suffix == ".json":
            import json

            fields = json.loads(path.read_text(encoding="utf-8"))
            cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
        elif path.is_dir():
            cfg = AutoConfig.from_pretrained(path)
        elif path.suffix == ".gguf":
            raise UserInputError(
                f"model {model!r}: plan a .gguf model by its architecture name instead "
                "(e.g. 'embedded' or a bundled name: " + ", ".join(BUNDLED) + ")"
            )
        elif "/" in model and not path.exists():
            cfg = AutoConfig.from_pretrained(model)
        else:
            raise UserInputError(
                f"unknown model {model!r}: not a bundled name ({', '.join(BUNDLED)}), "
                "a local config.json or model directory, or a hub id"
            )
    except UserInputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 and it is not in the local cache)" if offline else ""
        raise UserInputError(f"cannot read a config for model {model!r}{hint}: {exc}") from None
    return getattr(cfg, "text_config", None) or cfg
