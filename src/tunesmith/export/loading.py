"""Load the base, the adapted (unmerged) model and the merged model for a source.

The base goes through :func:`tunesmith.models.load_model_and_tokenizer`, the same path
training uses, so ``embedded``, hub ids, local directories and ``.gguf`` files all work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, UserInputError, WorkFailed
from tunesmith.export.source import AdapterSource, sha256_files

DTYPES = ("auto", "bf16", "fp16", "fp32")


def torch_dtype(name: str):
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ConfigError("dtype", name, "one of " + ", ".join(DTYPES))
    return table[name]


def dtype_label(dtype) -> str:
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def _checkpoint_path(base_model: str) -> Path | None:
    """The local directory holding the base's weights, if it can be found without a download."""
    from tunesmith.models import resolve_model

    src = resolve_model(base_model)
    if Path(src.path).is_dir():
        return Path(src.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src.path, local_files_only=True))
    except Exception:  # not cached locally: identity falls back to the loaded tensors
        return None


def base_config(base_model: str):
    """The base's ``PretrainedConfig`` without loading weights."""
    from transformers import AutoConfig

    from tunesmith.models import resolve_model

    return AutoConfig.from_pretrained(resolve_model(base_model).path)


def checkpoint_dtype(base_model: str):
    """The dtype the base checkpoint stores: config ``dtype``, else its first float tensor."""
    import torch

    path = _checkpoint_path(base_model)
    if path is None:
        return None
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str) and hasattr(torch, name):
        return getattr(torch, name)
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = fh.get_slice(key)
                dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(
                    t.get_dtype()
                )
                if dt is not None:
                    return dt
    return None


def base_identity(base_model: str, model=None) -> dict[str, Any]:
    """Name + SHA-256 over the base's weight files (or over its tensors when no file is local)."""
    import hashlib

    path = _checkpoint_path(base_model)
    files = sorted(path.glob("*.safetensors")) if path else []
    if files:
        return {
            "name": base_model,
            "path": str(path),
            "sha256": sha256_files(files),
            "hashed": [f.name for f in files],
        }
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"name": base_model, "path": None, "sha256": h.hexdigest(), "hashed": "state_dict"}


def qlora_quantization_config():
    """The QLoRA base exactly as training loads it (the methods registry owns the settings)."""
    from tunesmith.methods.qlora import quantization_config

    return quantization_config()


def load_base(source: AdapterSource, *, dtype, quantized: bool = False):
    """``(model, tokenizer)``; the tokenizer saved beside the adapter wins over the base's."""
    from tunesmith.models import load_model_and_tokenizer

    qc = qlora_quantization_config() if quantized else None
    loaded = load_model_and_tokenizer(source.base_model, dtype=dtype, quantization_config=qc)
    model, tokenizer = loaded[0], loaded[1]
    if source.has_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.adapter_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _register_methods() -> None:
    # Custom methods (bottleneck adapters) register with peft when their module is imported;
    # PeftModel.from_pretrained can only read their adapters after that.
    try:
        from tunesmith.methods import method_names

        method_names()
    except ImportError:
        pass


def attach_adapter(model, adapter_dir: Path):
    """Stock peft: ``PeftModel.from_pretrained`` on the adapter directory, inference mode."""
    from peft import PeftModel

    _register_methods()
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserInputError(
            f"{adapter_dir}: peft cannot load this adapter onto its base ({exc})"
        ) from exc


def load_adapted(source: AdapterSource):
    """The adapted model as training left it, in fp32 (QLoRA: 4-bit base, fp32 compute)."""
    import torch

    model, tokenizer = load_base(source, dtype=torch.float32, quantized=source.quantized_base)
    return attach_adapter(model, source.adapter_dir), tokenizer


def load_merged(source: AdapterSource, dtype):
    """Fold the adapter into the base and return ``(merged_model, tokenizer)`` in ``dtype``.

    QLoRA: the base is loaded in 4-bit exactly as in training, dequantized to ``dtype`` and the
    adapter folded into that, so the merged weights are the weights the adapter was trained on.
    peft's ``safe_merge`` computes each merged weight on a copy and raises on NaN; we check
    every parameter once more because a NaN in a non-adapted tensor would pass that check.
    """
    import torch

    if source.quantized_base:
        from tunesmith.methods.qlora import dequantize

        # Fold in fp32 into the dequantized NF4 weights, round to ``dtype`` once at the end.
        model, tokenizer = load_base(source, dtype=torch.float32, quantized=True)
        model = dequantize(model)
    else:
        model, tokenizer = load_base(source, dtype=dtype)
        model = model.to(dtype)
    peft_model = attach_adapter(model, source.adapter_dir)
    try:
        merged = peft_model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft's NaN guard
        raise WorkFailed(f"merge failed: {exc}") from exc
    bad = [n for n, p in merged.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise WorkFailed(f"merged weights contain NaN/inf in {len(bad)} tensors, e.g. {bad[0]}")
    merged = merged.to(dtype)
    merged.config.dtype = dtype
    return merged.eval(), tokenizer
