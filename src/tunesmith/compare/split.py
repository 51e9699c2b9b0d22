"""The validation split of ``compare --lr-search``: a seeded share of the *training* examples.

Picking a learning rate on the held-out test questions would make the test figures optimistic
(the choice has seen them). So the search scores each rate on examples carved from the cleaned
training file instead; every rate trains on the rest. Cleaning has already kept the test set
apart from the training data (its near-duplicates removed), so the validation examples, a
subset of the training file, are disjoint from the test set too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tunesmith.atomic import write_text
from tunesmith.errors import UserInputError

VALIDATION_SHARE = 0.1
# Enough examples for a score that can tell rates apart, few enough to leave the training set
# nearly whole (and to keep scoring, one generation per example, short).
MIN_VALIDATION, MAX_VALIDATION = 8, 200


@dataclass(frozen=True)
class ValidationSplit:
    """Where the two parts were written.

    Attributes:
        fit: The training examples every learning rate trains on (the file minus validation).
        validation: The examples every learning rate is scored on.
        n_fit: Examples in ``fit``.
        n_validation: Examples in ``validation``.
    """

    fit: Path
    validation: Path
    n_fit: int
    n_validation: int


def validation_size(n: int, share: float = VALIDATION_SHARE) -> int:
    """How many of ``n`` training examples to set aside: ``share`` of them, within the bounds.

    Raises:
        UserInputError: Fewer than ``2 * MIN_VALIDATION`` examples (too few to carve from).
    """
    if n < 2 * MIN_VALIDATION:
        raise UserInputError(
            f"--lr-search needs at least {2 * MIN_VALIDATION} cleaned training examples to set "
            f"{MIN_VALIDATION} aside for validation; the data has {n}"
        )
    return min(max(MIN_VALIDATION, round(share * n)), MAX_VALIDATION, n // 2)


def split_validation(
    train: str | Path, out_dir: str | Path, seed: int, share: float = VALIDATION_SHARE
) -> ValidationSplit:
    """Write ``fit.jsonl`` and ``validation.jsonl`` under ``out_dir`` from a cleaned JSONL file.

    The choice depends only on the file's lines and ``seed``, so a rerun (or a resumed search)
    gets the same split; both parts keep the file's order.

    Args:
        train: The cleaned training file (one record per line).
        out_dir: Where the two files go.
        seed: The compare's seed.
        share: The share of examples set aside (bounded by ``MIN/MAX_VALIDATION``).
    """
    lines = [ln for ln in Path(train).read_text(encoding="utf-8").splitlines() if ln.strip()]
    k = validation_size(len(lines), share)
    chosen = set(random.Random(seed).sample(range(len(lines)), k))
    out = Path(out_dir)
    fit, validation = out / "fit.jsonl", out / "validation.jsonl"
    write_text(fit, "".join(ln + "\n" for i, ln in enumerate(lines) if i not in chosen))
    write_text(validation, "".join(lines[i] + "\n" for i in sorted(chosen)))
    return ValidationSplit(fit, validation, len(lines) - k, k)
