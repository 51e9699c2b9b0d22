"""The flags and the finish that the training-style benches (``train``, ``dpo``) share.

Both run variants in child processes for ``--steps`` optimizer steps, ``--reps`` alternated
rounds, against a TRL peer that needs the ``[bench]`` extra; both print a table, then their
``key=value`` lines, and can write every row to ``--json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    quick: str,
    variants: Sequence[str],
    unit: str = "examples",
) -> None:
    """``--model --steps --reps --quick --batch-size --threads --variants --json``.

    Args:
        parser: The bench's parser.
        steps: Default optimizer steps per run.
        quick: Help text of ``--quick`` (what it runs and how long it takes).
        variants: Every variant the bench offers (the default runs them all).
        unit: What ``--batch-size`` counts.
    """
    parser.add_argument(
        "--model", default="embedded", help="base model (default: embedded SmolLM2-135M)"
    )
    parser.add_argument(
        "--steps", type=int, default=steps, help="optimizer steps per run (1 untimed)"
    )
    parser.add_argument("--reps", type=int, default=3, help="alternated rounds of all variants")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--batch-size", type=int, default=8, help=f"{unit} per step")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (default: torch's own; 1 resists a busy machine)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(variants),
        choices=variants,
        metavar="VARIANT",
        help=f"variants to run (default: {' '.join(variants)})",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every row to this JSON file")


def steps_and_reps(
    args: argparse.Namespace,
    *,
    quick: tuple[int, int],
    trl_variants: Sequence[str],
    trl_available: bool,
) -> tuple[int, int]:
    """``(steps, reps)`` from ``--quick`` or ``--steps/--reps``, checked.

    Raises:
        ConfigError: fewer than 2 steps (the first is the untimed warm-up), or a count < 1.
        UserInputError: a TRL variant is asked for and trl is not installed.
    """
    from tunesmith.errors import ConfigError, UserInputError

    steps, reps = quick if args.quick else (args.steps, args.reps)
    for key, value in (("steps", steps), ("reps", reps), ("batch-size", args.batch_size)):
        if value < (2 if key == "steps" else 1):
            raise ConfigError(
                key, value, "an integer >= 2" if key == "steps" else "an integer >= 1"
            )
    if not trl_available and set(args.variants) & set(trl_variants):
        raise UserInputError(
            "the TRL variants need trl: pip install 'tunesmith[bench]', or run --variants tunesmith"
        )
    return steps, reps


def print_report(
    report: dict[str, Any],
    json_path: str | None,
    table: Callable[[dict[str, Any]], Any],
    lines: list[str],
) -> None:
    """Write ``report`` to ``json_path`` (if given), print its table, then the final lines."""
    if json_path:
        from tunesmith.atomic import write_json

        write_json(Path(json_path), report)
    from rich.console import Console

    # A fixed width: a pipe or log file would otherwise squeeze the 12 columns to 80 characters.
    Console(width=160).print(table(report))
    for line in lines:
        print(line, flush=True)
