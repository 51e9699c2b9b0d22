"""``export --format gguf``: merge, write one GGUF file, check it in two runtimes, publish.

1. The adapted model (base + unmerged adapter) is loaded once, as stored: 16-bit weights (a
   QLoRA base in 4-bit). It runs once in fp32 arithmetic (:mod:`~tunesmith.models.upcast`):
   teacher-forced logits on the probe prompts (:mod:`~tunesmith.export.verify`) and greedy
   answers on the held-out prompts (:mod:`~tunesmith.export.runtime_check`).
2. The same model is written tensor by tensor, each adapted layer folded in fp32 when it is
   written (:mod:`~tunesmith.export.lazy_merge`) and rounded once into the requested type: by
   the ``gguf`` package for the types it encodes, by llama.cpp's own quantizer (from an
   intermediate f32 file) for the K-quants. Host memory: the model as stored plus one layer in
   fp32, never an fp32 copy of the whole model.
3. transformers' GGUF reader reloads the file (16-bit, computing in fp32) and its logits are
   compared with the adapted model's; llama.cpp loads it and must answer (and stop) as the adapted model does.
4. Only then is the file renamed into place, ``export.json`` (one entry per GGUF in the
   directory) records both checks, and with ``--ollama`` a ``Modelfile`` is written beside it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tunesmith.atomic import atomic_path, write_json
from tunesmith.disk import check_free_disk
from tunesmith.errors import UserInputError
from tunesmith.export import llamacpp
from tunesmith.export.gguf_writer import check_architecture, write_gguf
from tunesmith.export.lazy_merge import NotStreamable, merged_tensors
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
from tunesmith.heap import release_free_heap
from tunesmith.models.adapted import load_adapted, load_merged
from tunesmith.models.artifact import Artifact
from tunesmith.models.upcast import fp32_compute

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


def _load_for_export(source: Artifact):
    """The adapted model as stored (16-bit base, adapter unmerged); a QLoRA base in 4-bit with
    fp32 compute, as training ran it."""
    import torch

    return load_adapted(source, dtype=torch.float32 if source.quantized_base else None)


def _release_freed_memory() -> None:
    """Give the pages of freed tensors back to the OS before the next phase loads a model."""
    import gc

    gc.collect()
    release_free_heap()


def _reader_dtype(quant: str):
    """The dtype transformers' reader holds the file's weights in: exactly the file's values
    for f16/bf16/f32; half precision for the quantized types (their dequantized values carry
    an f16 scale, and the rounding is far below the quantization error)."""
    import torch

    return {"f32": torch.float32, "bf16": torch.bfloat16}.get(quant, torch.float16)


def _check_with_transformers(path: Path, ref, quant: str, quantized_base: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=_reader_dtype(quant), **kw)
    with fp32_compute(model):
        report = compare(
            model.eval(),
            ref,
            tolerance_for(quant, quantized_base),
            loader="transformers from_pretrained(gguf_file=...)",
            candidate_tokenizer=AutoTokenizer.from_pretrained(path.parent, **kw),
        )
    del model
    _release_freed_memory()
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
    adapted = _load_for_export(source)
    if verify:
        with fp32_compute(adapted.model):
            ref = capture_reference(adapted.model, adapted.tokenizer, probe or Probe())
            if in_llamacpp:
                convs = held_out_conversations(source, held_out, held_out_limit)
                answers = adapted_answers(adapted.model, adapted.tokenizer, convs)
    if verify and source.quantized_base:
        # The checks ran the 4-bit model, which repacks its weights for the CPU kernel:
        # fold from a copy that has not run (only one is resident at a time).
        del adapted
        _release_freed_memory()
        adapted = _load_for_export(source)
    try:
        tensors = merged_tensors(adapted.model)
    except NotStreamable:
        del adapted  # this layer type folds only with the whole model: merge it in fp32
        adapted = load_merged(source, torch.float32)
        tensors = None
    if tensors is not None:
        n_params = sum(math.prod(shape) for shape in tensors.shapes().values())
    else:
        n_params = sum(p.numel() for p in adapted.model.parameters())
    scratch = 4.0 if q.via_llamacpp else 0.0  # the intermediate f32 file
    check_free_disk(out.parent, int(n_params * (q.bytes_per_param + scratch)), "GGUF file")
    tokenizer = adapted.tokenizer
    context_length = adapted.model.config.max_position_embeddings
    from tunesmith.eval.generate import stop_token_ids

    stop_ids = stop_token_ids(adapted.model, tokenizer)
    detail: dict = {"quant": quant, "writer": "llama.cpp" if q.via_llamacpp else "gguf"}
    with atomic_path(out) as tmp:
        name = f"{source.base_model} + {source.method}"
        target = tmp.with_name(tmp.name + ".f32") if q.via_llamacpp else tmp
        try:
            write_gguf(
                adapted.model,
                tokenizer,
                target,
                "f32" if q.via_llamacpp else quant,
                name=name,
                tensors=tensors,
            )
            del adapted, tensors
            _release_freed_memory()
            if q.via_llamacpp:
                llamacpp.quantize(target, tmp, quant)
        finally:
            if target != tmp:
                target.unlink(missing_ok=True)
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
