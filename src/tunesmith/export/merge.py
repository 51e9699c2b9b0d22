"""``merge``: fold a LoRA-family adapter into its base and save a stock HF checkpoint.

LoRA (Hu et al., 2022, arXiv:2106.09685, Eq. 3) and rsLoRA (Kalajdzievski, 2023,
arXiv:2312.03732) fold as W' = W + s·B·A with s = alpha/r or alpha/sqrt(r); DoRA (Liu et al.,
2024, arXiv:2402.09353, Eq. 5) as W' = m ⊙ (W + s·B·A) / ||W + s·B·A||_c; IA3 (Liu et al.,
2022, arXiv:2205.05638) as W' = W ⊙ l. peft implements all four; we call its
``merge_and_unload(safe_merge=True)`` and check the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.atomic import atomic_dir, write_json
from tunesmith.disk import check_free_disk
from tunesmith.errors import UserInputError
from tunesmith.export.dtypes import checkpoint_dtype, dtype_label, torch_dtype
from tunesmith.export.source import require_mergeable, resolve_source
from tunesmith.export.verify import (
    Probe,
    VerificationFailed,
    VerifyReport,
    capture_reference,
    compare,
    tolerance_for,
)
from tunesmith.models.adapted import load_adapted, load_merged
from tunesmith.models.artifact import MERGE_RECORD, Artifact
from tunesmith.models.identity import adapter_identity

# Shards small enough for any filesystem and for parallel downloads; stock transformers
# writes the index file that ties them together.
MAX_SHARD_SIZE = "2GB"


@dataclass
class MergeResult:
    """A merged checkpoint and how it was made and checked."""

    out: Path
    method: str
    dtype: str
    base: dict[str, Any]
    adapter: dict[str, Any]
    verification: VerifyReport | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "method": self.method,
            "dtype": self.dtype,
            "base": self.base,
            "adapter": self.adapter,
            "files": self.files,
            "verification": self.verification.to_dict() if self.verification else None,
        }


def check_output_path(out: str | Path, source: Artifact) -> Path:
    """Refuse outputs that would overwrite the input."""
    out = Path(out).expanduser()
    src, dst = source.path.resolve(), out.resolve()
    if dst == src or dst == source.dir.resolve() or src.is_relative_to(dst):
        raise UserInputError(f"output {out} would overwrite the input {source.path}")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output {out} exists and is not a directory")
    # The output directory is replaced as a whole, so only ever replace an earlier export.
    earlier = (MERGE_RECORD, "adapter_config.json")
    if out.is_dir() and any(out.iterdir()) and not any((out / f).is_file() for f in earlier):
        raise UserInputError(
            f"output {out} exists and is not an earlier merge or export; "
            "remove it or choose another path"
        )
    return out


def resolve_out_dtype(dtype: str | None, source: Artifact):
    """The requested dtype, else the base checkpoint's own (never a silent fp32 upcast)."""
    import torch

    if dtype not in (None, "auto"):
        return torch_dtype(dtype)
    found = checkpoint_dtype(source.base_model)
    return found if found is not None else torch.float32


def save_checkpoint(model, tokenizer, out: Path) -> None:
    """Write weights (sharded safetensors), config, generation config, tokenizer + template."""
    model.save_pretrained(out, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(out)


def reference_for(source: Artifact, probe: Probe | None = None):
    """Run the unmerged adapted model once, in fp32 (QLoRA: on its 4-bit base), and free it."""
    import torch

    loaded = load_adapted(source, dtype=torch.float32)
    ref = capture_reference(loaded.model, loaded.tokenizer, probe or Probe())
    del loaded
    return ref


def verify_checkpoint(path: Path, ref, dtype, quantized_base: bool = False) -> VerifyReport:
    """Reload with stock ``AutoModelForCausalLM``/``AutoTokenizer`` and compare."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return compare(
        model,
        ref,
        tolerance_for(dtype_label(dtype), quantized_base),
        loader="transformers AutoModelForCausalLM",
        candidate_tokenizer=tokenizer,
        expected_dtype=dtype,
    )


def merge(
    source: str | Path | Artifact,
    out: str | Path,
    *,
    dtype: str | None = None,
    verify: bool = True,
    probe: Probe | None = None,
) -> MergeResult:
    """Fold the adapter of ``source`` into its base and write a verified HF checkpoint.

    Args:
        source: a run directory, an adapter directory, or a resolved :class:`Artifact`.
        out: output directory; written atomically, published only after verification passes.
        dtype: ``auto`` (default: the base checkpoint's dtype), ``bf16``, ``fp16`` or ``fp32``.
        verify: reload the output with stock transformers and compare it with the unmerged
            adapted model (on by default; the CLI always verifies).
        probe: verification prompts and generation length (default: a few built-in chat
            prompts, 16 tokens; :func:`~tunesmith.export.verify.prompts_from_file` reads
            held-out questions).

    Returns:
        A :class:`MergeResult` with the base/adapter identity and the verification report.

    Raises:
        UserInputError: bad input or a method that cannot be merged (exit 2).
        WorkFailed: NaN in the merged weights, or verification failed (exit 1).
    """
    src = source if isinstance(source, Artifact) else resolve_source(source)
    require_mergeable(src)
    out = check_output_path(out, src)
    out_dtype = resolve_out_dtype(dtype, src)
    ref = reference_for(src, probe) if verify else None
    loaded = load_merged(src, out_dtype)
    result = MergeResult(
        out=out,
        method=src.method,
        dtype=dtype_label(out_dtype),
        base=loaded.base_identity,
        adapter=adapter_identity(src),
    )
    n_bytes = sum(p.numel() for p in loaded.model.parameters()) * out_dtype.itemsize
    check_free_disk(out.parent, n_bytes, "merged model")
    with atomic_dir(out) as tmp:
        save_checkpoint(loaded.model, loaded.tokenizer, tmp)
        del loaded
        if ref is not None:
            result.verification = verify_checkpoint(tmp, ref, out_dtype, src.quantized_base)
            if not result.verification.passed:
                raise VerificationFailed(result.verification)
        record = {k: v for k, v in result.to_dict().items() if k not in ("out", "files")}
        record["quantized_base"] = "nf4, dequantized before merging" if src.quantized_base else None
        write_json(tmp / MERGE_RECORD, record)
        result.files = sorted(p.name for p in tmp.iterdir())
    return result
