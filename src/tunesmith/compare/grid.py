"""The learning rates ``compare --lr-search`` tries, and when it gives up on one.

The grid is multiplicative around each method's own default (:func:`~tunesmith.compare.lr.lr_for`):
learning rates matter on a log scale, and a default a factor of three off is the common miss
(LoRA's best rate is about ten times full fine-tuning's: Schulman et al. 2025, "LoRA Without
Regret"). A rate whose loss blows up is stopped early rather than trained to the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tunesmith.errors import ConfigError

# default x {1/3, 1, 3}: three rates a half-decade apart, the default in the middle.
DEFAULT_GRID = (1 / 3, 1.0, 3.0)
# Rates tried past the grid's edge per method when the best rate sits on it (see next_rate).
EDGE_EXTENSIONS = 2
# A run is diverging when, after warm-up, its recent loss is this many times its first one.
DIVERGE_FACTOR = 1.5
_WINDOW = 3  # recent steps averaged (one step's loss is noisy)


def parse_grid(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.3,1,3"`` -> ``(0.3, 1.0, 3.0)``: positive multipliers, de-duplicated and sorted.

    Raises:
        ConfigError: An empty list, a non-number or a multiplier <= 0.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = sorted({float(x) for x in items if str(x).strip()})
    except ValueError:
        values = []
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ConfigError("lr-grid", text, "a comma list of positive multipliers, e.g. 0.3,1,3")
    return tuple(values)


def lr_grid(default: float, grid: Sequence[float] = DEFAULT_GRID) -> list[float]:
    """The rates tried: ``default`` times each multiplier, rounded to 3 significant digits
    (so that ``2e-3 / 3`` names its run directory ``lr-0.000667``)."""
    return sorted({float(f"{default * m:.3g}") for m in grid})


def next_rate(tried: Sequence[float], best: float | None, grid: Sequence[float]) -> float | None:
    """The rate to try next when ``best`` is the highest or lowest rate ``tried``, else None.

    A best rate on the grid's edge only says the optimum is there or beyond: the search steps
    once more in that direction, by the grid's own ratio at that edge (3 for the default grid).
    A rate above it that diverged or failed counts as tried, so the step is never retaken.
    """
    if best is None or len(tried) < 2:
        return None
    steps = sorted(grid)
    if best >= max(tried):
        ratio = steps[-1] / steps[-2] if len(steps) > 1 else 3.0
    elif best <= min(tried):
        ratio = steps[0] / steps[1] if len(steps) > 1 else 1 / 3
    else:
        return None
    return float(f"{best * ratio:.3g}")


def diverging(
    warmup_steps: int, factor: float = DIVERGE_FACTOR
) -> Callable[[list[float]], str | None]:
    """A ``stop_when`` predicate for :class:`~tunesmith.train.loop.TrainLoop`.

    It stops a run whose last loss is not finite, or whose mean loss over the last 3 steps,
    once past ``warmup_steps`` (the schedule's warm-up, while a high rate may still wobble),
    is above ``factor`` times its first step's loss (the model before any update). A working
    rate lowers the loss; one that ends well above where it began only spends the budget.
    """

    def check(losses: list[float]) -> str | None:
        if losses and not math.isfinite(losses[-1]):
            return f"loss {losses[-1]}"
        if len(losses) < max(warmup_steps, _WINDOW) + 1 or not math.isfinite(losses[0]):
            return None
        recent = losses[-_WINDOW:]
        if not all(math.isfinite(x) for x in recent):
            return None
        r = sum(recent) / len(recent)
        if r > factor * losses[0]:
            return (
                f"diverging: loss {r:.3g} over the last {_WINDOW} steps, "
                f"{r / losses[0]:.1f}x its first step's {losses[0]:.3g}"
            )
        return None

    return check
