"""Resolve ``--model`` and load it through transformers exactly as a user would.

``--model`` accepts the embedded default (``embedded``), a hub id (``Qwen/Qwen2.5-7B-Instruct``),
a local checkpoint directory, or a ``.gguf`` file. Safetensors only and
``trust_remote_code=False`` unless explicitly asked: pickled ``.bin`` weights can execute code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith import vector_math
from tunesmith.errors import UserInputError
from tunesmith.models import embedded

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from; ``path`` is what ``from_pretrained`` receives."""

    kind: Literal["embedded", "hub", "local", "gguf"]
    path: str
    display: str


def resolve_model(model: str) -> ModelSource:
    """Classify ``--model`` and, for GGUF inputs, return the converted checkpoint."""
    if model in (embedded.EMBEDDED_NAME, "", None):
        return ModelSource("embedded", str(embedded.embedded_checkpoint()), embedded.DISPLAY_NAME)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserInputError(f"model file not found: {model}")
        return ModelSource(
            "gguf", str(_gguf_checkpoint(path)), f"{path.name} (converted from GGUF)"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserInputError(
                f"{model} is a directory but has no config.json; not a model checkpoint"
            )
        return ModelSource("local", str(path.resolve()), str(path))
    if path.exists():
        raise UserInputError(
            f"{model} is a file; --model takes a directory, a hub id or a .gguf file"
        )
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return ModelSource("hub", model, model)
    raise UserInputError(
        f"model not found: {model!r} is neither a local directory, a .gguf file, nor a hub id "
        "(org/name); use --model embedded for the bundled SmolLM2-135M-Instruct"
    )


def _gguf_checkpoint(path: Path) -> Path:
    # Key the cache by content identity cheaply: name, size and the first/last MiB.
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, st.st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    target = embedded.cache_root() / "gguf" / f"{path.stem}-{h.hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target
    return embedded.convert_gguf_checkpoint(path, target)


def _load_kwargs(trust_remote_code: bool, allow_pickle: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kw["use_safetensors"] = True
    return kw


def load_tokenizer(source: ModelSource | str, *, trust_remote_code: bool = False):
    """Load the tokenizer; ensure a pad token (batched generation and padding need one)."""
    from transformers import AutoTokenizer

    if isinstance(source, str) and (Path(source) / "tokenizer_config.json").is_file():
        # An adapter or run directory that carries its own tokenizer (and chat template).
        src = ModelSource("local", source, source)
    else:
        src = source if isinstance(source, ModelSource) else resolve_model(source)
    try:
        tok = AutoTokenizer.from_pretrained(src.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"cannot load tokenizer for {src.display}: {_first_line(exc)}"
        ) from exc
    if tok.pad_token is None:
        # The EOS token as padding is safe because padded positions are masked out of the loss.
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(
    model: str | ModelSource = "embedded",
    *,
    dtype: Any = None,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    attn_implementation: str | None = "sdpa",
    device_map: Any = None,
):
    """Load a causal LM and its tokenizer.

    Args:
        model: ``embedded``, a hub id, a local directory or a ``.gguf`` file.
        dtype: torch dtype for the weights (default: the checkpoint's own dtype).
        quantization_config: e.g. a ``BitsAndBytesConfig`` for QLoRA.
        trust_remote_code: allow model code from the repository (off by default).
        allow_pickle: allow pickled ``.bin`` weights (off by default; safetensors only).
        attn_implementation: ``sdpa`` by default (no s^2 score matrix kept for backward).
        device_map: passed through (e.g. ``{"": 0}``) for quantized loading.

    Returns:
        ``(model, tokenizer, source)``.
    """
    from transformers import AutoModelForCausalLM

    vector_math.initialize()  # before the model's first (parallel) cos: see vector_math.py
    src = model if isinstance(model, ModelSource) else resolve_model(model)
    tok = load_tokenizer(src, trust_remote_code=trust_remote_code)
    kw = _load_kwargs(trust_remote_code, allow_pickle)
    kw["dtype"] = dtype if dtype is not None else "auto"
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if device_map is not None:
        kw["device_map"] = device_map
    try:
        lm = AutoModelForCausalLM.from_pretrained(src.path, **kw)
    except OSError as exc:
        msg = _first_line(exc)
        if "safetensors" in msg.lower() or ".bin" in msg:
            msg += " (only safetensors weights load by default; pass --allow-pickle to accept .bin)"
        raise UserInputError(f"cannot load model {src.display}: {msg}") from exc
    except ValueError as exc:
        raise UserInputError(f"cannot load model {src.display}: {_first_line(exc)}") from exc
    except Exception as exc:
        if not is_damaged_weights(exc):
            raise
        raise UserInputError(
            f"cannot load model {src.display}: its weights file is damaged or truncated "
            f"({_first_line(exc)})"
        ) from exc
    if lm.generation_config.pad_token_id is None:
        lm.generation_config.pad_token_id = tok.pad_token_id
    return lm, tok, src


def is_damaged_weights(exc: BaseException) -> bool:
    """Whether ``exc`` says a weights file is cut short or corrupt (safetensors or torch)."""
    from safetensors import SafetensorError

    if isinstance(exc, SafetensorError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "PytorchStreamReader" in text or "unexpected EOF" in text or "deserializ" in text
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
