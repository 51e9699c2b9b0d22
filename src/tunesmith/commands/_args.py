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


def add_lora_size_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--rank`` and ``--target`` defaulting to the default recipe's, as ``train`` does;
    ``what`` says what they size (shown in the help)."""
    from tunesmith.methods.recipes import DEFAULT_RECIPE

    rank, target = DEFAULT_RECIPE["rank"], DEFAULT_RECIPE["target"]
    parser.add_argument(
        "--rank", type=positive_int, default=rank,
        help=f"LoRA rank r {what} (default {rank}, as train's)",
    )  # fmt: skip
    parser.add_argument(
        "--target", default=target,
        help=f"LoRA-family targets {what}: preset (attn-qv, attn, mlp, all-linear) or a comma "
        f"list of module names (default {target}, as train's)",
    )  # fmt: skip
