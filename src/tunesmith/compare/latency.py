"""Batch-1 forward latency of each trained run against the base model, as ``compare`` reports it.

Each trained model is loaded from disk the way a user would serve it (``load_adapted``: base +
adapter, unmerged) and timed *interleaved* with the base model (base, method, base, method,
...), as :mod:`tunesmith.bench.latency` does, so a machine that gets busier or quieter during
the minutes of a comparison shifts both alike and the ratio to the base stays fair. Only the
base and one trained model are in memory at a time. Timing: untimed warm-up calls, then the
median of ``runs`` forward passes under ``torch.inference_mode`` on the same short prompt.
All models load in fp32 (QLoRA keeps its 4-bit base, the way it is served), so rows differ by
method, not by precision.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.bench.latency import interleaved_medians


@dataclass(frozen=True)
class LatencySettings:
    """How batch-1 latency is measured.

    Attributes:
        prompt_tokens: Length of the timed prompt (the first held-out prompt, cut to this).
        runs: Timed forward passes per model; the median is reported.
        warmup: Untimed forward passes first (allocator, caches, lazy init).
    """

    prompt_tokens: int = 64
    runs: int = 10
    warmup: int = 2


@dataclass
class Latencies:
    """Measured latencies.

    Attributes:
        base_ms: Median base forward (the median over its interleaved pairings), or None.
        base_params: The base model's parameter count, or None when it did not load.
        methods: method -> ``(median ms, ratio to the base timed beside it)``.
        errors: method (or ``"base"``) -> why it was not measured.
    """

    base_ms: float | None = None
    base_params: int | None = None
    methods: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def prompt_ids(tokenizer, text: str, n_tokens: int):
    """``(1, T)`` token ids of ``text`` cut to at most ``n_tokens`` tokens."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return ids[:, :n_tokens]


def forward_call(model, ids) -> Callable[[], object]:
    """A closure running one batch-1 forward of ``model`` over ``ids`` (1, T), to completion."""
    import torch

    device = next(model.parameters()).device
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    model.eval()

    def forward():
        out = model(input_ids=ids, attention_mask=mask)
        if device.type == "cuda":  # kernels run asynchronously: time their completion
            torch.cuda.synchronize(device)
        return out

    return forward


def _load_run(run_dir: Path):
    import torch

    from tunesmith.models.adapted import load_adapted

    # A 4-bit-base method (the spec's quantized_base) keeps its 4-bit base, as it is served.
    loaded = load_adapted(run_dir, dtype=torch.float32)
    return loaded.model, loaded.tokenizer


def measure_latencies(
    model_ref: str,
    run_dirs: Mapping[str, Path],
    text: str,
    settings: LatencySettings,
    *,
    trust_remote_code: bool = False,
    on_error: Callable[[str, BaseException], None] | None = None,
) -> Latencies:
    """Time the base model ``model_ref`` and each run's trained model, pairwise interleaved.

    Args:
        model_ref: The base (``--model``).
        run_dirs: method -> run directory holding ``adapter/`` or ``model/``.
        text: The prompt to time (cut to ``settings.prompt_tokens`` tokens).
        settings: Runs, warm-up, prompt length.
        trust_remote_code: Passed to the base model's loader.
        on_error: Told of each model that could not be timed (its row keeps no latency).

    Returns:
        :class:`Latencies`.
    """
    import torch

    from tunesmith.models import load_model_and_tokenizer

    result = Latencies()
    try:
        base, tok, _ = load_model_and_tokenizer(
            model_ref, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # without the base there is nothing to time against
        result.errors["base"] = str(exc)
        if on_error:
            on_error("base", exc)
        return result
    result.base_params = sum(p.numel() for p in base.parameters())
    base_fn = forward_call(base, prompt_ids(tok, text, settings.prompt_tokens))
    base_medians = []
    with torch.inference_mode():
        for method, run_dir in run_dirs.items():
            try:
                model, mtok = _load_run(run_dir)
                fn = forward_call(model, prompt_ids(mtok, text, settings.prompt_tokens))
                t = interleaved_medians({"base": base_fn, "m": fn}, settings.runs, settings.warmup)
            except Exception as exc:  # a row without latency beats no comparison
                result.errors[method] = str(exc)
                if on_error:
                    on_error(method, exc)
                continue
            finally:
                model = fn = None  # free this model before loading the next
                gc.collect()
            base_medians.append(t["base"])
            result.methods[method] = (1e3 * t["m"], t["m"] / t["base"])
        if not base_medians:  # nothing trained to pair with: time the base alone
            base_medians.append(
                interleaved_medians({"base": base_fn}, settings.runs, settings.warmup)["base"]
            )
    result.base_ms = 1e3 * statistics.median(base_medians)
    return result
