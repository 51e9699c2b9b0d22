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
from tunesmith.disk import check_free_disk
from tunesmith.errors import ConfigError, UserInputError, WorkFailed
from tunesmith.export.gguf_writer import (
    GGUF_BYTES_PER_PARAM,
    GGUF_TYPES,
    check_architecture,
    write_gguf,
)
from tunesmith.export.merge import MergeResult, check_output_path, merge, reference_for
from tunesmith.export.source import require_mergeable, resolve_source
from tunesmith.export.verify import (
    Probe,
    VerificationFailed,
    VerifyReport,
    compare,
    tolerance_for,
)
from tunesmith.models.adapted import attach_adapter, load_base, load_merged
from tunesmith.models.artifact import Artifact
from tunesmith.models.identity import sha256_files

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


def _copy_adapter(source: Artifact, out: Path) -> list[str]:
    files = [p for p in source.dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    for p in files:
        shutil.copy2(p, out / p.name)
    if sha256_files([out / p.name for p in files]) != sha256_files(files):
        raise WorkFailed(f"copy of {source.dir} does not match the original bytes")
    return [p.name for p in files]


def export_peft(
    source: Artifact,
    out: Path,
    *,
    verify: bool = True,
    probe: Probe | None = None,
) -> ExportResult:
    """Copy the adapter (plus the tokenizer if it is not there) and reload it with stock peft."""
    import torch

    ref = reference_for(source, probe) if verify else None
    report = None
    size = sum(p.stat().st_size for p in source.dir.iterdir() if p.is_file())
    check_free_disk(out.parent, 2 * size, "adapter")  # the adapter and, at most, a tokenizer
    with atomic_dir(out) as tmp:
        _copy_adapter(source, tmp)
        base = load_base(source, dtype=torch.float32)  # QLoRA: the 4-bit base it trained on
        if not source.has_tokenizer:
            # The chat template must travel with the adapter, so bring the base's tokenizer.
            base.tokenizer.save_pretrained(tmp)
        if ref is not None:
            from transformers import AutoTokenizer

            model = attach_adapter(base.model, tmp)
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


def _base_config(source: Artifact):
    """The base's ``PretrainedConfig``, read without loading weights."""
    from transformers import AutoConfig

    from tunesmith.models import resolve_model

    return AutoConfig.from_pretrained(
        resolve_model(source.base_model).path, trust_remote_code=source.trust_remote_code
    )


def export_gguf(
    source: Artifact,
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
    check_architecture(_base_config(source))  # fail before any model is loaded
    ref = reference_for(source, probe) if verify else None
    # Merging in fp32 rounds once, into the GGUF type, instead of twice.
    merged = load_merged(source, torch.float32)
    n_params = sum(p.numel() for p in merged.model.parameters())
    check_free_disk(out.parent, int(n_params * GGUF_BYTES_PER_PARAM[gguf_type]), "GGUF file")
    report = None
    with atomic_path(out) as tmp:
        name = f"{source.base_model} + {source.method}"
        write_gguf(merged.model, merged.tokenizer, tmp, gguf_type, name=name)
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
    source: str | Path | Artifact,
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
        source: run directory, adapter directory or :class:`Artifact`.
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
    src = source if isinstance(source, Artifact) else resolve_source(source)
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
