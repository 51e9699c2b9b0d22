"""Search for the fastest configuration that fits: method, micro-batch, checkpointing, length.

The search is exhaustive over a small grid (a few hundred analytic evaluations, milliseconds)
and ranks what fits by a relative step-time estimate, so the answer is the cheapest change,
not the first one tried. Which methods a run may switch to, and at what relative cost, is
each method's ``MethodSpec.cheaper_alternatives``. Relative costs, each from a published
measurement:

- gradient checkpointing recomputes the forward once: about +33% step time (Chen et al. 2016,
  arXiv:1604.06174, Sec. 5: one extra forward of a forward+backward costing ~3 forwards);
- QLoRA dequantizes every weight on every use: ~1.4x LoRA's step time (Dettmers et al. 2023,
  QLoRA, and peft's benchmarks of bitsandbytes 4-bit vs 16-bit LoRA);
- a smaller micro-batch with more accumulation keeps the effective batch (same examples per
  optimizer step) but uses the GPU less well: ~10% per halving on large GPUs;
- 8-bit AdamW costs next to nothing (Dettmers et al. 2022, arXiv:2110.02861, Table 3);
- a shorter sequence length truncates data, so it is a last resort (weighted 4x per halving);
- switching full fine-tuning to LoRA changes what is learned: weighted 2x.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from tunesmith.methods.base import get_method
from tunesmith.plan.analytic import StepSettings, Terms

HEADROOM = 0.90  # "fits" leaves 10% of the budget free; within it the verdict is "tight"
MIN_SEQ = 128


@dataclass(frozen=True)
class Candidate:
    settings: StepSettings
    grad_accum: int
    terms: Terms
    relative_time: float


def _methods(method: str) -> list[tuple[str, float]]:
    """The method itself and the ones it may switch to, with their relative step time."""
    return [(method, 1.0), *get_method(method).cheaper_alternatives]


def checkpointing_choices(method: str) -> tuple[bool, ...]:
    """Checkpointing choices: none for methods that refuse it (prefix-style, see MethodSpec)."""
    return (False, True) if get_method(method).gradient_checkpointing else (False,)


def _optimizers(optimizer: str) -> list[tuple[str, float]]:
    if optimizer in ("adamw", "paged_adamw"):
        return [(optimizer, 1.0), ("adamw8bit", 1.02)]
    return [(optimizer, 1.0)]


def _halvings(start: int, stop: int) -> Iterator[tuple[int, int]]:
    value, k = start, 0
    while value >= stop:
        yield value, k
        if value == stop:
            break
        value, k = max(stop, value // 2), k + 1


def candidates(
    base: StepSettings, grad_accum: int, evaluate: Callable[[StepSettings], Terms]
) -> Iterator[Candidate]:
    """Every configuration of the grid around ``base`` with its terms and relative time."""
    effective = base.batch_size * grad_accum
    for method, m_cost in _methods(base.method):
        for optimizer, o_cost in _optimizers(base.optimizer):
            for gc in checkpointing_choices(method):
                for micro, halved in _halvings(base.batch_size, 1):
                    for seq, shortened in _halvings(base.seq_len, min(MIN_SEQ, base.seq_len)):
                        settings = replace(
                            base, method=method, optimizer=optimizer,
                            gradient_checkpointing=gc, batch_size=micro, seq_len=seq,
                        )  # fmt: skip
                        cost = m_cost * o_cost * (1.33 if gc else 1.0)
                        cost *= 1.1**halved * 4.0**shortened
                        accum = math.ceil(effective / micro)
                        yield Candidate(settings, accum, evaluate(settings), cost)


def best_fit(
    base: StepSettings,
    grad_accum: int,
    budget: int,
    evaluate: Callable[[StepSettings], Terms],
) -> tuple[Candidate | None, Candidate]:
    """(the fastest candidate within the headroom or None, the smallest candidate overall)."""
    best: Candidate | None = None
    smallest: Candidate | None = None
    for cand in candidates(base, grad_accum, evaluate):
        if smallest is None or cand.terms.total < smallest.terms.total:
            smallest = cand
        fits = cand.terms.total <= HEADROOM * budget
        if fits and (best is None or cand.relative_time < best.relative_time):
            best = cand
    assert smallest is not None
    return best, smallest


def describe_changes(base: StepSettings, grad_accum: int, cand: Candidate) -> list[str]:
    """Human-readable differences between the requested and the recommended configuration."""
    s = cand.settings
    out = []
    if s.method != base.method:
        out.append(f"method {base.method} -> {s.method}")
    if s.optimizer != base.optimizer:
        out.append(f"optimizer {base.optimizer} -> {s.optimizer}")
    if s.gradient_checkpointing != base.gradient_checkpointing:
        out.append("gradient checkpointing " + ("on" if s.gradient_checkpointing else "off"))
    if s.batch_size != base.batch_size:
        out.append(
            f"micro-batch {base.batch_size} x accumulation {grad_accum} -> "
            f"{s.batch_size} x {cand.grad_accum}"
        )
    if s.seq_len != base.seq_len:
        out.append(f"sequence length {base.seq_len} -> {s.seq_len} (longer examples truncated)")
    return out
