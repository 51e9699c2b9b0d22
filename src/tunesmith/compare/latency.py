"""Batch-1 forward latency of a trained run (or the base model), as ``compare`` reports it.

Each model is loaded from disk the way a user would serve it (``load_adapted``: base +
adapter, unmerged), timed alone and freed before the next one, so memory stays at one model
even for many methods. Timing follows :mod:`tunesmith.bench.latency`: untimed warm-up calls,
then the median of ``runs`` forward passes under ``torch.inference_mode`` on the same prompt.
All rows load in fp32 (QLoRA keeps its 4-bit base, which is what it is served with), so the
numbers differ by method, not by precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.bench.latency import interleaved_medians


@dataclass(frozen=True)
class LatencySettings:
    """How batch-1 latency is measured.

    Attributes:
        prompt_tokens: Length of the timed prompt (the first held-out prompt, cut to this).
        runs: Timed forward passes; the median is reported.
        warmup: Untimed forward passes first (allocator, caches, lazy init).
    """

    prompt_tokens: int = 64
    runs: int = 10
    warmup: int = 2


def prompt_ids(tokenizer, text: str, n_tokens: int):
    """``(1, T)`` token ids of ``text`` cut to at most ``n_tokens`` tokens."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return ids[:, :n_tokens]


def forward_latency_s(model, ids, settings: LatencySettings) -> float:
    """Median seconds of one forward pass of ``model`` over ``ids`` (1, T) at batch size 1."""
    import torch

    device = next(model.parameters()).device
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    model.eval()
    with torch.inference_mode():
        times = interleaved_medians(
            {"m": lambda: model(input_ids=ids, attention_mask=mask)},
            settings.runs,
            settings.warmup,
        )
    return times["m"]


def run_latency_s(run_dir: Path, text: str, settings: LatencySettings) -> float:
    """Load the adapter (or trained model) of ``run_dir`` and time its batch-1 forward."""
    import torch

    from tunesmith.models.adapted import load_adapted, locate

    kw = {}
    if locate(run_dir).method == "qlora":
        from tunesmith.methods.qlora import quantization_config

        kw["quantization_config"] = quantization_config()
    model, tok, _ = load_adapted(run_dir, dtype=torch.float32, **kw)
    return forward_latency_s(model, prompt_ids(tok, text, settings.prompt_tokens), settings)


def base_latency_s(
    model_ref: str, text: str, settings: LatencySettings, *, trust_remote_code: bool = False
) -> float:
    """Time the batch-1 forward of the base model ``model_ref`` (``--model``)."""
    import torch

    from tunesmith.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(
        model_ref, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return forward_latency_s(model, prompt_ids(tok, text, settings.prompt_tokens), settings)
