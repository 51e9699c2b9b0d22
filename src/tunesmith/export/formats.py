"""``export``: the adapter (PEFT), a merged checkpoint (safetensors) or one GGUF file.

Each format is written to a temp path, reloaded by a loader other than the one that wrote
it, compared with the unmerged adapted model (:mod:`tunesmith.export.verify`) and only then
renamed into place; a failed check leaves nothing at ``out`` and raises ``WorkFailed``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith.atomic import atomic_dir
from tunesmith.disk import check_free_disk
from tunesmith.errors import ConfigError, UserInputError, WorkFailed
from tunesmith.export.gguf_export import export_gguf
from tunesmith.export.merge import MergeResult, check_output_path, merge, reference_for
from tunesmith.export.quants import DEFAULT_QUANT
from tunesmith.export.result import ExportResult
from tunesmith.export.source import resolve_source
from tunesmith.export.verify import Probe, VerificationFailed, compare, tolerance_for
from tunesmith.models.adapted import attach_adapter, load_base
from tunesmith.models.artifact import Artifact
from tunesmith.models.identity import sha256_files

FORMATS = ("peft", "safetensors", "gguf")


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


def export(
    source: str | Path | Artifact,
    fmt: str,
    out: str | Path,
    *,
    dtype: str | None = None,
    quant: str = DEFAULT_QUANT,
    verify: bool = True,
    probe: Probe | None = None,
    held_out: str | Path | None = None,
    held_out_limit: int | None = None,
    ollama: bool = False,
) -> ExportResult:
    """Export ``source`` (run or adapter directory) as ``fmt`` to ``out``, verified.

    Args:
        source: run directory, adapter directory or :class:`Artifact`.
        fmt: ``peft`` (adapter directory), ``safetensors`` (merged HF checkpoint directory)
            or ``gguf`` (one ``.gguf`` file for llama.cpp; Llama-family and Qwen2).
        out: output directory (peft, safetensors) or file (gguf).
        dtype: safetensors only: ``auto`` (the base's dtype), ``bf16``, ``fp16``, ``fp32``.
        quant: gguf only: a type of :data:`~tunesmith.export.quants.QUANTS` (``f16``, ``bf16``,
            ``q8_0``, ``q4_0``, ``q5_0``, ``q4_k_m``, ``q5_k_m``, ``q6_k``, also ``f32``); the
            K-quants need the ``[llamacpp]`` extra.
        verify: compare the reloaded output with the unmerged adapted model (gguf: also in
            llama.cpp itself when the ``[llamacpp]`` extra is installed).
        probe: verification prompts and generation length (default: :class:`Probe`).
        held_out: gguf only: the data file whose prompts the llama.cpp check answers (default:
            the run's eval split).
        held_out_limit: gguf only: at most this many held-out prompts.
        ollama: gguf only: also write an Ollama ``Modelfile`` beside the file.

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
    return export_gguf(
        src,
        out_path,
        quant=quant,
        verify=verify,
        probe=probe,
        held_out=held_out,
        held_out_limit=held_out_limit,
        ollama=ollama,
    )
