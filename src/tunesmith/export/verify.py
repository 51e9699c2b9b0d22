"""Check an exported model against the adapted model it came from.

The reference is the adapted model exactly as training left it: the base plus the *unmerged*
adapter, computed in fp32 (for QLoRA: the 4-bit base, dequantized on the fly as in training).
The candidate is the export reloaded by a *different* loader (stock transformers, stock peft,
transformers' own GGUF reader), so a bug shared by our writer and our reader cannot hide.

Three measurements on a few chat prompts:

* logits: max and mean absolute difference over every position of the prompt plus the
  reference's greedy continuation (teacher forcing, so both models see the same tokens);
* decisive agreement: at every generated position where the reference's top-1 beats its
  top-2 by more than twice the tolerance, the candidate must pick the same token. Positions
  closer than that are ties *within the format's precision* and may legitimately flip;
* free-running greedy agreement: the candidate generates on its own; we report how many
  continuations match exactly and the share of tokens before the first divergence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError, WorkFailed

# A prompt is a user message, or the chat turns (role/content dicts) before the answer.
Prompt = str | tuple[Mapping[str, str], ...]

DEFAULT_PROMPTS: tuple[str, ...] = (
    "How many patients live in Lyon?",
    "List the names of all doctors, ordered by name.",
    "Which drug was prescribed most often in 2024?",
    "Write one short sentence about the sea.",
)


@dataclass(frozen=True)
class Probe:
    """What verification runs: the prompts and how many tokens to generate greedily for each."""

    prompts: tuple[Prompt, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 16


@dataclass(frozen=True)
class Tolerance:
    """Allowed max |Δlogit|, relative to the reference's logit scale max(1, max|logit|)."""

    label: str
    logit_rel: float
    why: str


# Stated per format. Measured on SmolLM2-135M-Instruct + a perturbed rank-8 LoRA (logit scale
# 41, 4 prompts x 16 generated tokens), as max |Δlogit| / scale: fp32 merge and f32 GGUF 1.9e-6,
# f16 GGUF 8.3e-4, bf16 GGUF 8.2e-3, bf16 safetensors 2.9e-2 (bf16 weights *and* bf16
# compute in transformers), q8_0 GGUF 3.2e-2. Each limit leaves a 3-50x margin over that.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(
        "fp32",
        1e-4,
        "only float re-association: W·x + s·B·A·x vs (W + s·B·A)·x differ by ~1e-6 relative",
    ),
    "fp16": Tolerance(
        "fp16",
        5e-3,
        "each weight rounded to an 11-bit mantissa (2^-11 ≈ 5e-4 relative), accumulated over layers",
    ),
    "bf16": Tolerance(
        "bf16",
        8e-2,
        "each weight (and, in transformers, each activation) rounded to an 8-bit mantissa "
        "(2^-8 ≈ 4e-3 relative), accumulated over layers",
    ),
    # QLoRA's reference runs the 4-bit base through bitsandbytes, whose CPU kernels dequantize
    # each NF4 block to the quant-state dtype (bf16) inside the matmul, while the merge folds
    # into the fp32-dequantized weights: the two differ by that on-the-fly rounding.
    "nf4": Tolerance(
        "nf4",
        8e-2,
        "the 4-bit reference dequantizes NF4 blocks to bf16 inside its matmuls (2^-8 relative)",
    ),
    "q8_0": Tolerance(
        "q8_0",
        1e-1,
        "int8 with one fp16 scale per block of 32 weights: error ≤ block max / 254 per weight",
    ),
    # Below 8 bits the logits move visibly; these bounds catch a broken file (garbage, NaN,
    # a wrong layout), while whether the answers survive is judged in llama.cpp on the task.
    "q6_k": Tolerance(
        "q6_k", 0.25, "6-bit K-quant blocks of 256 (llama.cpp's fallbacks on short rows)"
    ),
    "q5": Tolerance("q5", 0.35, "5-bit blocks of 32 (q5_0) or K-quant super-blocks (q5_k_m)"),
    "q4": Tolerance("q4", 0.5, "4-bit blocks of 32 (q4_0) or K-quant super-blocks (q4_k_m)"),
}
_TOLERANCE_OF = {
    "f32": "fp32",
    "f16": "fp16",
    "q5_0": "q5",
    "q5_k_m": "q5",
    "q4_0": "q4",
    "q4_k_m": "q4",
}


def tolerance_for(label: str, quantized_base: bool = False) -> Tolerance:
    """Tolerance by output dtype (fp32/fp16/bf16) or GGUF type (any ``--quant``).

    With a 4-bit (QLoRA) reference the looser of the format's and the ``nf4`` tolerance holds.
    """
    tol = TOLERANCES[_TOLERANCE_OF.get(label, label)]
    if quantized_base and TOLERANCES["nf4"].logit_rel > tol.logit_rel:
        return TOLERANCES["nf4"]
    return tol


@dataclass
class Reference:
    """What the adapted model did on the verification prompts (all on CPU, fp32 logits)."""

    prompts: tuple[Prompt, ...]
    sequences: list[Any]  # each (1, T): prompt ids + greedy continuation
    prompt_lens: list[int]
    logits: list[Any]  # each (T, V) float32
    eos_token_id: Any
    pad_token_id: int | None
    max_new_tokens: int
    chat_template: str | None
    prompt_ids: list[list[int]] = field(default_factory=list)


class CheckResult:
    """What every export check's report shares: it passed when it recorded no failure."""

    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class VerifyReport(CheckResult):
    """Outcome of one verification; ``passed`` is False when any entry of ``failures`` exists."""

    loader: str
    tolerance: str
    max_abs_diff: float
    mean_abs_diff: float
    limit_abs: float
    logit_scale: float
    decisive_agreement: float
    decisive_positions: int
    greedy_exact: float
    greedy_token_agreement: float
    n_prompts: int
    dtype: str | None = None
    tokenizer_agreement: float | None = None
    chat_template_preserved: bool | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class VerificationFailed(WorkFailed):
    """The export did not reproduce the adapted model within its tolerance (exit 1)."""

    def __init__(self, report: VerifyReport):
        self.report = report
        super().__init__("verification failed: " + "; ".join(report.failures))


def prompts_from_file(path: str | Path, limit: int = 8) -> tuple[Prompt, ...]:
    """The first ``limit`` prompts of a data file (any format ``tunesmith.data`` reads).

    Each prompt is the record's turns before its final answer, e.g. the held-out questions of
    a run's eval split, so verification covers the answers users will actually ask for.
    """
    from tunesmith.data.readers import read_file
    from tunesmith.data.records import Conversation

    records = (r for r in read_file(path) if isinstance(r, Conversation) and r.prompt_turns)
    prompts = tuple(
        tuple({"role": t.role, "content": t.content} for t in r.prompt_turns)
        for r in islice(records, limit)
    )
    if not prompts:
        raise UserInputError(f"{path}: no usable prompts (no valid records)")
    return prompts


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Render ``prompt`` with the model's chat template (plain text without one)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])


def _greedy(model, ids, ref: Reference):
    import torch
    from transformers import GenerationConfig

    # An explicit config so neither model's own generation_config (sampling flags) leaks in.
    gen = GenerationConfig(
        max_new_tokens=ref.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=ref.eos_token_id,
        pad_token_id=ref.pad_token_id,
    )
    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen
        )


def _logits(model, seq):
    import torch

    with torch.inference_mode():
        return model(input_ids=seq).logits[0].float()  # (T, V)


def capture_reference(model, tokenizer, probe: Probe = Probe()) -> Reference:
    """Run the adapted model once: greedy continuations and their teacher-forced logits."""
    import torch

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ref = Reference(
        prompts=tuple(probe.prompts),
        sequences=[],
        prompt_lens=[],
        logits=[],
        eos_token_id=eos,
        pad_token_id=pad,
        max_new_tokens=probe.max_new_tokens,
        chat_template=getattr(tokenizer, "chat_template", None),
    )
    for prompt in probe.prompts:
        ids = encode_prompt(tokenizer, prompt)
        seq = _greedy(model, torch.tensor([ids]), ref)
        ref.prompt_ids.append(ids)
        ref.prompt_lens.append(len(ids))
        ref.sequences.append(seq)
        ref.logits.append(_logits(model, seq))
    return ref


def compare(
    candidate,
    ref: Reference,
    tolerance: Tolerance,
    *,
    loader: str,
    candidate_tokenizer=None,
    expected_dtype: Any = None,
) -> VerifyReport:
    """Measure ``candidate`` against ``ref``; the report lists every failed check."""
    import torch

    scale = max(1.0, max(float(lg.abs().max()) for lg in ref.logits))
    limit = tolerance.logit_rel * scale
    max_abs, abs_sum, count = 0.0, 0.0, 0
    decisive, decisive_ok, exact, agree_tokens, gen_tokens = 0, 0, 0, 0, 0
    for seq, plen, ref_logits in zip(ref.sequences, ref.prompt_lens, ref.logits, strict=True):
        cand_logits = _logits(candidate, seq)
        diff = (cand_logits - ref_logits).abs()
        max_abs = max(max_abs, float(diff.max()))
        abs_sum, count = abs_sum + float(diff.double().sum()), count + diff.numel()
        # Positions plen-1 .. T-2 predict the generated tokens.
        step_ref = ref_logits[plen - 1 : seq.shape[1] - 1]
        top2 = step_ref.topk(2, dim=-1).values
        mask = (top2[:, 0] - top2[:, 1]) > 2 * limit
        same = step_ref.argmax(-1) == cand_logits[plen - 1 : seq.shape[1] - 1].argmax(-1)
        decisive += int(mask.sum())
        decisive_ok += int((same & mask).sum())
        # Free-running greedy from the prompt alone.
        free = _greedy(candidate, seq[:, :plen], ref)
        exact += int(torch.equal(free, seq))
        ref_new, cand_new = seq[0, plen:].tolist(), free[0, plen:].tolist()
        prefix = 0
        for a, b in zip(ref_new, cand_new, strict=False):
            if a != b:
                break
            prefix += 1
        agree_tokens += prefix
        gen_tokens += max(len(ref_new), 1)
    n = len(ref.sequences)
    report = VerifyReport(
        loader=loader,
        tolerance=tolerance.label,
        max_abs_diff=max_abs,
        mean_abs_diff=abs_sum / max(count, 1),
        limit_abs=limit,
        logit_scale=scale,
        decisive_agreement=decisive_ok / decisive if decisive else 1.0,
        decisive_positions=decisive,
        greedy_exact=exact / n if n else 1.0,
        greedy_token_agreement=agree_tokens / gen_tokens if gen_tokens else 1.0,
        n_prompts=n,
    )
    _check_logits(report, tolerance)
    _check_dtype(report, candidate, expected_dtype)
    if candidate_tokenizer is not None:
        _check_tokenizer(report, candidate_tokenizer, ref)
    return report


def _check_logits(report: VerifyReport, tolerance: Tolerance) -> None:
    if not report.max_abs_diff <= report.limit_abs:  # also catches NaN
        report.failures.append(
            f"max |Δlogit| {report.max_abs_diff:.3g} exceeds the {tolerance.label} limit "
            f"{report.limit_abs:.3g} ({tolerance.logit_rel:g} × logit scale {report.logit_scale:.3g})"
        )
    if report.decisive_agreement < 1.0:
        report.failures.append(
            f"greedy choice differs at {report.decisive_positions - round(report.decisive_agreement * report.decisive_positions)}"
            f" of {report.decisive_positions} positions where the adapted model is decisive"
        )


def _check_dtype(report: VerifyReport, candidate, expected_dtype) -> None:
    dtype = next((p.dtype for p in candidate.parameters() if p.is_floating_point()), None)
    report.dtype = str(dtype).replace("torch.", "") if dtype is not None else None
    if expected_dtype is not None and dtype != expected_dtype:
        report.failures.append(f"weights reload as {dtype}, expected {expected_dtype}")


def _check_tokenizer(report: VerifyReport, tokenizer, ref: Reference) -> None:
    template = getattr(tokenizer, "chat_template", None)
    report.chat_template_preserved = template == ref.chat_template
    if ref.chat_template and not report.chat_template_preserved:
        report.failures.append("the chat template did not survive the export")
    same = sum(
        encode_prompt(tokenizer, p) == ids
        for p, ids in zip(ref.prompts, ref.prompt_ids, strict=True)
    )
    report.tokenizer_agreement = same / len(ref.prompts) if ref.prompts else 1.0
    if report.tokenizer_agreement < 1.0:
        # Reported, not failed: a reader may rebuild the pre-tokenizer differently from the
        # source (transformers' GGUF reader knows fewer `tokenizer.ggml.pre` names than llama.cpp).
        report.notes.append(
            f"the reloaded tokenizer encodes {len(ref.prompts) - same} of {len(ref.prompts)} "
            "prompts differently from the source tokenizer"
        )
