"""``export``: the adapter (PEFT), a merged checkpoint (safetensors) or one GGUF file.

Each format is written to a temp path, reloaded by a loader other than the one that wrote
it, compared with the unmerged adapted model (:mod:`tunesmith.export.verify`) and only then
renamed into place; a failed check leaves nothing at ``out`` and raises ``WorkFailed``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.atomic import atomic_dir, atomic_path
from tunesmith.errors import ConfigError, UserInputError, WorkFailed
from tunesmith.export.gguf_writer import GGUF_TYPES, check_architecture, write_gguf
from tunesmith.export.loading import attach_adapter, base_config, load_base, load_merged
from tunesmith.export.merge import MergeResult, check_output_path, merge, reference_for
from tunesmith.export.source import AdapterSource, require_mergeable, resolve_source, sha256_files
from tunesmith.export.verify import (
    Probe,
    VerificationFailed,
    VerifyReport,
    compare,
    tolerance_for,
)

FORMATS = ("peft", "safetensors", "gguf")


@dataclass
class ExportResult:
    """What was written where, and the verification that let it be published."""

    format: str
    out: Path
    method: str
    verification: VerifyReport | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "out": str(self.out),
            "method": self.method,
            **self.detail,
            "verification": self.verification.to_dict() if self.verification else None,
        }


def _copy_adapter(source: AdapterSource, out: Path) -> list[str]:
    files = [p for p in source.adapter_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    for p in files:
        shutil.copy2(p, out / p.name)
    if sha256_files([out / p.name for p in files]) != sha256_files(files):
        raise WorkFailed(f"copy of {source.adapter_dir} does not match the original bytes")
    return [p.name for p in files]


def export_peft(
    source: AdapterSource,
    out: Path,
    *,
    verify: bool = True,
    probe: Probe | None = None,
) -> ExportResult:
    """Copy the adapter (plus the tokenizer if it is not there) and reload it with stock peft."""
    import torch

    ref = reference_for(source, probe) if verify else None
    report = None
    with atomic_dir(out) as tmp:
        _copy_adapter(source, tmp)
        base, tokenizer = load_base(source, dtype=torch.float32, quantized=source.quantized_base)
        if not source.has_tokenizer:
            # The chat template must travel with the adapter, so bring the base's tokenizer.
            tokenizer.save_pretrained(tmp)
        if ref is not None:
            from transformers import AutoTokenizer

            model = attach_adapter(base, tmp)
            report = compare(
                model,
                ref,
                tolerance_for("fp32", source.quantized_base),
                loader="peft PeftModel.from_pretrained",
                candidate_tokenizer=AutoTokenizer.from_pretrained(tmp),
            )
            if not report.passed:
                raise VerificationFailed(report)
        files = sorted(p.name for p in tmp.iterdir())
    return ExportResult("peft", out, source.method, report, {"files": files})


def export_gguf(
    source: AdapterSource,
    out: Path,
    *,
    gguf_type: str = "f16",
    verify: bool = True,
    probe: Probe | None = None,
) -> ExportResult:
    """Merge in fp32, write one GGUF, reload it with transformers' GGUF reader."""
    import torch

    if gguf_type not in GGUF_TYPES:
        raise ConfigError("gguf-type", gguf_type, "one of " + ", ".join(GGUF_TYPES))
    if out.suffix != ".gguf":
        raise UserInputError(f"GGUF output must be a file ending in .gguf, got {out}")
    require_mergeable(source)
    check_architecture(base_config(source.base_model))  # fail before any model is loaded
    ref = reference_for(source, probe) if verify else None
    # Merging in fp32 rounds once, into the GGUF type, instead of twice.
    merged, tokenizer = load_merged(source, torch.float32)
    report = None
    with atomic_path(out) as tmp:
        write_gguf(merged, tokenizer, tmp, gguf_type, name=f"{source.base_model} + {source.method}")
        del merged
        if ref is not None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            kw = {"gguf_file": tmp.name}
            model = AutoModelForCausalLM.from_pretrained(tmp.parent, dtype=torch.float32, **kw)
            report = compare(
                model.eval(),
                ref,
                tolerance_for(gguf_type, source.quantized_base),
                loader="transformers from_pretrained(gguf_file=...)",
                candidate_tokenizer=AutoTokenizer.from_pretrained(tmp.parent, **kw),
            )
            if not report.passed:
                raise VerificationFailed(report)
        size = tmp.stat().st_size
    return ExportResult("gguf", out, source.method, report, {"gguf_type": gguf_type, "bytes": size})


def export(
    source: str | Path | AdapterSource,
    fmt: str,
    out: str | Path,
    *,
    dtype: str | None = None,
    gguf_type: str = "f16",
    verify: bool = True,
    probe: Probe | None = None,
) -> ExportResult:
    """Export ``source`` (run or adapter directory) as ``fmt`` to ``out``, verified.

    Args:
        source: run directory, adapter directory or :class:`AdapterSource`.
        fmt: ``peft`` (adapter directory), ``safetensors`` (merged HF checkpoint directory)
            or ``gguf`` (one ``.gguf`` file for llama.cpp; Llama-family and Qwen2).
        out: output directory (peft, safetensors) or file (gguf).
        dtype: safetensors only: ``auto`` (the base's dtype), ``bf16``, ``fp16``, ``fp32``.
        gguf_type: gguf only: ``f32``, ``f16``, ``bf16`` or ``q8_0``.
        verify: compare the reloaded output with the unmerged adapted model.
        probe: verification prompts and generation length (default: :class:`Probe`).

    Raises:
        UserInputError: bad input, unsupported format/architecture, unmergeable method for a
            merged format (exit 2).
        WorkFailed: the output did not pass verification (exit 1); nothing is left at ``out``.
    """
    if fmt not in FORMATS:
        raise ConfigError("format", fmt, "one of " + ", ".join(FORMATS))
    src = source if isinstance(source, AdapterSource) else resolve_source(source)
    if fmt == "safetensors":
        result: MergeResult = merge(src, out, dtype=dtype, verify=verify, probe=probe)
        detail = {
            k: v for k, v in result.to_dict().items() if k not in ("out", "method", "verification")
        }
        return ExportResult("safetensors", result.out, src.method, result.verification, detail)
    out_path = Path(out).expanduser()
    if fmt == "peft":
        return export_peft(src, check_output_path(out_path, src), verify=verify, probe=probe)
    if out_path.is_dir():
        raise UserInputError(
            f"GGUF output {out_path} is a directory; give a file name ending in .gguf"
        )
    return export_gguf(src, out_path, gguf_type=gguf_type, verify=verify, probe=probe)
