"""What a merge or export starts from: a run directory or a PEFT adapter directory.

A run directory (``runs/<name>/``) holds ``adapter/`` and ``config.yaml``; an adapter directory
holds ``adapter_config.json`` (with ``base_model_name_or_path``) and
``adapter_model.safetensors``. Everything is validated here, before any output is created, so
bad input fails with exit 2 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# peft types whose update folds into the base weights (W' = W + ΔW or W' = l ⊙ W).
_FOLDABLE_PEFT_TYPES = frozenset({"LORA", "IA3"})
# Used only for method names the registry does not (yet) know.
_MERGEABLE_FALLBACK = frozenset({"lora", "qlora", "dora", "rslora", "ia3"})


@dataclass(frozen=True)
class AdapterSource:
    """A validated merge/export input.

    Attributes:
        path: what the user passed.
        adapter_dir: the PEFT adapter directory inside it.
        base_model: the base model reference (``embedded``, hub id, directory, ``.gguf``).
        method: tunesmith method name (``lora``, ``dora``, ``qlora``, ``prefix``, ...).
        peft_type: ``peft_type`` from ``adapter_config.json`` (``LORA``, ``IA3``, ...).
        mergeable: whether the method can be folded into the base weights.
        quantized_base: whether training saw a 4-bit base (QLoRA).
        adapter_config: the parsed ``adapter_config.json``.
        run_config: the parsed ``config.yaml`` of the run, if there is one.
    """

    path: Path
    adapter_dir: Path
    base_model: str
    method: str
    peft_type: str
    mergeable: bool
    quantized_base: bool
    adapter_config: dict[str, Any] = field(repr=False)
    run_config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def has_tokenizer(self) -> bool:
        """The trainer saves the tokenizer beside the adapter; older adapters may lack it."""
        return (self.adapter_dir / "tokenizer_config.json").is_file()


def _read_run_config(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML ({exc})") from exc
    return data if isinstance(data, dict) else None


def infer_method(adapter_config: dict[str, Any]) -> str:
    """Name the tunesmith method from a peft ``adapter_config.json``."""
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    if peft_type == "LORA":
        if adapter_config.get("use_dora"):
            return "dora"
        return "rslora" if adapter_config.get("use_rslora") else "lora"
    named = {"IA3": "ia3", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}
    return named.get(peft_type, peft_type.lower())


def _registry_flags(method: str) -> tuple[bool | None, bool]:
    """(mergeable, quantized_base) from the methods registry; None where it does not know."""
    try:
        from tunesmith.methods import get_method

        spec = get_method(method)
    except UserInputError:
        return None, method == "qlora"
    return spec.mergeable, spec.quantized_base


def resolve_source(path: str | Path) -> AdapterSource:
    """Validate ``path`` as a run or adapter directory.

    Raises:
        UserInputError: the path is missing, is not a run/adapter directory, or its adapter
            config is unreadable or names no base model.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserInputError(f"{path}: no such run or adapter directory")
    if not path.is_dir():
        raise UserInputError(f"{path}: expected a run directory or a PEFT adapter directory")
    if (path / "adapter" / ADAPTER_CONFIG).is_file():
        adapter_dir, run_config = path / "adapter", _read_run_config(path / "config.yaml")
    elif (path / ADAPTER_CONFIG).is_file():
        # An adapter inside a run directory still knows its run's method (e.g. qlora).
        adapter_dir, run_config = path, _read_run_config(path.parent / "config.yaml")
    else:
        raise UserInputError(
            f"{path}: not a run directory (no adapter/) nor a PEFT adapter directory "
            f"(no {ADAPTER_CONFIG})"
        )
    try:
        adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{adapter_dir / ADAPTER_CONFIG}: unreadable ({exc})") from exc
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise UserInputError(
            f"{adapter_dir}: no {ADAPTER_WEIGHTS} (only safetensors adapters are accepted)"
        )
    base = (run_config or {}).get("model") or adapter_config.get("base_model_name_or_path")
    if not base:
        raise UserInputError(
            f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path; cannot tell the base model"
        )
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    method = str((run_config or {}).get("method") or infer_method(adapter_config))
    registry_mergeable, quantized = _registry_flags(method)
    mergeable = peft_type in _FOLDABLE_PEFT_TYPES and (
        registry_mergeable if registry_mergeable is not None else method in _MERGEABLE_FALLBACK
    )
    return AdapterSource(
        path=path,
        adapter_dir=adapter_dir,
        base_model=str(base),
        method=method,
        peft_type=peft_type,
        mergeable=mergeable,
        quantized_base=quantized,
        adapter_config=adapter_config,
        run_config=run_config,
    )


def require_mergeable(source: AdapterSource) -> None:
    """Refuse methods whose parameters do not fold into the base weights."""
    if not source.mergeable:
        raise UserInputError(
            f"method {source.method!r} ({source.peft_type}) cannot be merged into the base weights: "
            "its extra modules or virtual tokens stay separate at inference. "
            f"Export the adapter instead: tunesmith export {source.path} --format peft -o OUT"
        )


def sha256_files(paths: list[Path]) -> str:
    """One SHA-256 over the files' names and bytes, in sorted order (1 MiB chunks)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def adapter_identity(source: AdapterSource) -> dict[str, Any]:
    files = [source.adapter_dir / ADAPTER_CONFIG, source.adapter_dir / ADAPTER_WEIGHTS]
    return {"path": str(source.adapter_dir.resolve()), "sha256": sha256_files(files)}
