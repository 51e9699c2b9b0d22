"""``export --format gguf``: merge, write one GGUF file, check it in two runtimes, publish.

1. The adapted model (base + unmerged adapter, fp32) runs once: teacher-forced logits on the
   probe prompts (:mod:`~tunesmith.export.verify`) and greedy answers on the held-out prompts
   (:mod:`~tunesmith.export.runtime_check`); then it is freed.
2. The merge (QLoRA: into the dequantized base) is written in fp32 arithmetic, once rounded into
   the requested type: by the ``gguf`` package for the types it encodes, by llama.cpp's own
   quantizer (from an intermediate f32 file) for the K-quants.
3. transformers' GGUF reader reloads the file and its logits are compared with the adapted
   model's; llama.cpp loads it and must answer (and stop) as the adapted model does.
4. Only then is the file renamed into place, ``export.json`` (one entry per GGUF in the
   directory) records both checks, and with ``--ollama`` a ``Modelfile`` is written beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

from tunesmith.atomic import atomic_path, write_json
from tunesmith.disk import check_free_disk
from tunesmith.errors import UserInputError
from tunesmith.export import llamacpp
from tunesmith.export.gguf_writer import check_architecture, write_gguf
from tunesmith.export.quants import DEFAULT_QUANT, get_quant
from tunesmith.export.result import ExportResult
from tunesmith.export.runtime_check import (
    RuntimeCheckFailed,
    adapted_answers,
    check_in_llamacpp,
    held_out_conversations,
)
from tunesmith.export.source import require_mergeable
from tunesmith.export.verify import (
    Probe,
    VerificationFailed,
    capture_reference,
    compare,
    tolerance_for,
)
from tunesmith.models.adapted import load_adapted, load_merged
from tunesmith.models.artifact import Artifact

EXPORT_RECORD = "export.json"


def _base_config(source: Artifact):
    """The base's ``PretrainedConfig``, read without loading weights."""
    from transformers import AutoConfig

    from tunesmith.models import resolve_model

    return AutoConfig.from_pretrained(
        resolve_model(source.base_model).path, trust_remote_code=source.trust_remote_code
    )


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _check_with_transformers(path: Path, ref, quant: str, quantized_base: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
    report = compare(
        model.eval(),
        ref,
        tolerance_for(quant, quantized_base),
        loader="transformers from_pretrained(gguf_file=...)",
        candidate_tokenizer=AutoTokenizer.from_pretrained(path.parent, **kw),
    )
    if not report.passed:
        raise VerificationFailed(report)
    return report


def _record(out: Path, entry: dict) -> Path:
    """Add ``entry`` for ``out`` to the directory's ``export.json`` (other files' entries kept)."""
    import json

    path = out.parent / EXPORT_RECORD
    records = {}
    if path.is_file():
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            records = {}  # a damaged record is replaced, not trusted
    records[out.name] = entry
    return write_json(path, records)


def export_gguf(
    source: Artifact,
    out: Path,
    *,
    quant: str = DEFAULT_QUANT,
    verify: bool = True,
    probe: Probe | None = None,
    held_out: str | Path | None = None,
    held_out_limit: int | None = None,
    ollama: bool = False,
) -> ExportResult:
    """Merge ``source`` in fp32, write ``out`` as ``quant``, check it, publish it.

    Raises:
        UserInputError: bad output name, unsupported architecture or tokenizer, unmergeable
            method, or a K-quant without the ``[llamacpp]`` extra (exit 2).
        VerificationFailed: transformers' reader disagrees beyond the type's tolerance (exit 1).
        RuntimeCheckFailed: llama.cpp answers or stops differently (exit 1).
    """
    import torch

    started = time.perf_counter()
    q = get_quant(quant)
    if out.suffix != ".gguf":
        raise UserInputError(f"GGUF output must be a file ending in .gguf, got {out}")
    require_mergeable(source)
    check_architecture(_base_config(source))  # fail before any model is loaded
    if q.via_llamacpp:
        llamacpp.require(f"--quant {quant}")
    in_llamacpp = verify and llamacpp.available()
    ref = answers = None
    if verify:
        adapted = load_adapted(source, dtype=torch.float32)
        ref = capture_reference(adapted.model, adapted.tokenizer, probe or Probe())
        if in_llamacpp:
            convs = held_out_conversations(source, held_out, held_out_limit)
            answers = adapted_answers(adapted.model, adapted.tokenizer, convs)
        del adapted
    # Merging in fp32 rounds once, into the GGUF type, instead of twice.
    merged = load_merged(source, torch.float32)
    n_params = sum(p.numel() for p in merged.model.parameters())
    scratch = 4.0 if q.via_llamacpp else 0.0  # the intermediate f32 file
    check_free_disk(out.parent, int(n_params * (q.bytes_per_param + scratch)), "GGUF file")
    tokenizer = merged.tokenizer
    context_length = merged.model.config.max_position_embeddings
    from tunesmith.eval.generate import stop_token_ids

    stop_ids = stop_token_ids(merged.model, tokenizer)
    detail: dict = {"quant": quant, "writer": "llama.cpp" if q.via_llamacpp else "gguf"}
    with atomic_path(out) as tmp:
        name = f"{source.base_model} + {source.method}"
        if q.via_llamacpp:
            f32 = tmp.with_name(tmp.name + ".f32")
            try:
                write_gguf(merged.model, tokenizer, f32, "f32", name=name)
                del merged
                llamacpp.quantize(f32, tmp, quant)
            finally:
                f32.unlink(missing_ok=True)
        else:
            write_gguf(merged.model, tokenizer, tmp, quant, name=name)
            del merged
        report = None
        if ref is not None:
            report = _check_with_transformers(tmp, ref, quant, source.quantized_base)
        if answers is not None:
            runtime = check_in_llamacpp(tmp, answers, quant)
            detail["llamacpp"] = runtime.to_dict()
            if not runtime.passed:
                raise RuntimeCheckFailed(runtime)
        elif verify:
            detail["llamacpp"] = None
            detail["note"] = "not checked in llama.cpp: " + llamacpp.INSTALL_HINT
        detail["bytes"] = tmp.stat().st_size
    if ollama:
        from tunesmith.export.ollama import write_modelfile

        detail["modelfile"] = str(write_modelfile(out, tokenizer, stop_ids, context_length))
    detail["export_seconds"] = time.perf_counter() - started
    detail["peak_rss_bytes"] = _peak_rss_bytes()
    result = ExportResult("gguf", out, source.method, report, detail)
    _record(out, {k: v for k, v in result.to_dict().items() if k != "out"})
    return result
