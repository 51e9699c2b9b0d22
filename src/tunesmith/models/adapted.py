"""Load what a run produced: base + adapter (PEFT format) or a fully trained model.

Accepts a run directory (``runs/<name>``, holding ``adapter/`` or ``model/``) or an adapter
directory directly. Which base to load comes from ``tunesmith_base.json`` written beside the
adapter (``embedded`` stays portable across machines), else from peft's
``base_model_name_or_path``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError
from tunesmith.models.loading import load_model_and_tokenizer, load_tokenizer

BASE_INFO = "tunesmith_base.json"


@dataclass(frozen=True)
class Artifact:
    """A trained result on disk."""

    kind: str  # "adapter" | "model"
    path: Path
    base_model: str
    method: str


def locate(path: str | Path) -> Artifact:
    """Find the adapter or model inside a run directory, or accept an adapter dir."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"not found: {path}")
    for kind, sub in (("adapter", p / "adapter"), ("model", p / "model"), ("adapter", p)):
        if (sub / "adapter_config.json").is_file() or (
            kind == "model" and (sub / "config.json").is_file()
        ):
            info = _read_info(sub)
            base = info.get("model") or _peft_base(sub)
            return Artifact(kind, sub, base or "", info.get("method", _peft_type(sub)))
    raise UserInputError(
        f"{path} holds no adapter (adapter_config.json) or trained model; pass a run directory "
        "or an adapter directory"
    )


def _read_info(d: Path) -> dict[str, Any]:
    f = d / BASE_INFO
    return json.loads(f.read_text()) if f.is_file() else {}


def _peft_cfg(d: Path) -> dict[str, Any]:
    f = d / "adapter_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _peft_base(d: Path) -> str:
    return _peft_cfg(d).get("base_model_name_or_path", "")


def _peft_type(d: Path) -> str:
    return str(_peft_cfg(d).get("peft_type", "")).lower()


def load_adapted(
    path: str | Path, *, dtype: Any = None, base_override: str | None = None, **load_kw: Any
):
    """Load base + adapter (or the trained model). Returns ``(model, tokenizer, artifact)``."""
    import tunesmith.methods  # noqa: F401  registers tunesmith's own PEFT method types with peft

    art = locate(path)
    if art.kind == "model":
        model, tok, _ = load_model_and_tokenizer(str(art.path), dtype=dtype, **load_kw)
        return model, tok, art
    from peft import PeftModel

    tunesmith.methods.method_names()  # import every method module (custom tuners register on import)
    base = base_override or art.base_model
    if not base:
        raise UserInputError(
            f"{art.path}: cannot tell which base model the adapter belongs to; pass --model"
        )
    if art.method == "qlora" and "quantization_config" not in load_kw:
        # A QLoRA adapter was trained on the 4-bit base: evaluate and chat on that same base.
        from tunesmith.methods.qlora import quantization_config

        load_kw["quantization_config"] = quantization_config()
    model, tok, _ = load_model_and_tokenizer(base, dtype=dtype, **load_kw)
    if (art.path / "tokenizer_config.json").is_file():
        # The adapter's tokenizer carries the chat template it was trained with.
        tok = load_tokenizer(str(art.path))
    model = PeftModel.from_pretrained(model, str(art.path))
    model.eval()
    return model, tok, art
