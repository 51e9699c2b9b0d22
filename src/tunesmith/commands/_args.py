"""argparse types for numeric flags: a bad number is a usage error (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import math


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; expected an integer >= {low}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, lengths, sizes)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, minimums)."""
    return _int_at_least(text, 0)


def finite_float(text: str) -> float:
    """A finite number (``inf`` and ``nan`` are typos, never settings)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not allowed; expected a finite number")
    return value
