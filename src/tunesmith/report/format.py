"""Human-readable values for the report: numbers, bytes, durations, metric directions."""

from __future__ import annotations

import json
import math
from typing import Any

# Metric names (substrings) where a smaller value is the better one.
_LOWER_IS_BETTER = (
    "perplexity",
    "ppl",
    "loss",
    "repeated",
    "hit_length_limit",
    "latency",
    "time",
    "mem",
    "bytes",
    "error",
)
# Substrings of metrics whose base value may be 0 or near it, and whose change is best read in
# percentage points (execution accuracy 0.12 -> 0.62 is "+50 pts", not "+400%").
_NOT_A_SHARE = ("loss", "perplexity", "ppl")


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of the metric ``name`` is an improvement."""
    return any(part in name.lower() for part in _LOWER_IS_BETTER)


def fmt_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_seconds(s: float) -> str:
    """``75 -> '1 min 15 s'``; sub-minute durations keep one decimal."""
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {sec} s"


def fmt_number(v: float) -> str:
    """Integers with thousands separators; floats to 4 significant digits."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}"


def fmt_value(key: str, v: Any) -> str:
    """Format ``v`` by what its key says it is (bytes, seconds), else as a number or text."""
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if key.endswith("bytes") or key in ("peak_mem", "peak_memory"):
            return fmt_bytes(v)
        if "share" in key:
            return f"{v:.2%}"
        if key.endswith("_s") and not key.endswith("per_s"):
            return fmt_seconds(v)
        return fmt_number(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def fmt_delta(name: str, base: Any, adapted: Any) -> tuple[str, str]:
    """``(text, css class)`` of ``adapted - base``; class is better/worse/same by direction."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, adapted))
    if not numeric:
        return "—", "same"
    delta = adapted - base
    text = f"{delta:+.4g}"
    is_share = 0 <= base <= 1 and 0 <= adapted <= 1 and not any(p in name for p in _NOT_A_SHARE)
    if is_share:
        text += f" ({delta * 100:+.1f} pts)"
    elif base:
        text += f" ({delta / abs(base):+.1%})"
    if delta == 0:
        return text, "same"
    improved = (delta < 0) == lower_is_better(name)
    return text, "better" if improved else "worse"
