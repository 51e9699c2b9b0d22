"""Preference pairs for the clinic demo: the canonical SQL against a plausible wrong query.

The rejected query is the kind of mistake a base or half-trained model makes on this task:
a wrong column, a wrong table, a flipped condition or a wrong aggregate. Each chosen query
gets one such edit, picked by a seeded generator among the edits that apply to it, so the pair
files are deterministic and every pair has a real difference to learn.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from tunesmith.atomic import write_jsonl
from tunesmith.data.records import Conversation
from tunesmith.demo.dataset import demo_splits

SFT_DEMO_SIZES = (3000, 200)  # raw_demo's and write_demo_eval's defaults

_SWAPS: dict[str, list[tuple[str, str]]] = {
    "aggregate": [
        ("COUNT(", "SUM("),
        ("AVG(", "SUM("),
        ("MAX(", "MIN("),
        ("MIN(", "MAX("),
        ("SUM(", "AVG("),
    ],
    "condition": [
        (" >= ", " < "),
        (" <= ", " > "),
        (" > ", " <= "),
        (" < ", " >= "),
        (" = ", " != "),
        (" DESC", " ASC"),
    ],
    "column": [
        ("first_name", "last_name"),
        ("specialty", "name"),
        ("cost", "id"),
        ("dose_mg", "days"),
        ("visit_date", "reason"),
        ("city", "insurance"),
        ("drug", "id"),
    ],
    "table": [
        ("FROM patients", "FROM doctors"),
        ("FROM doctors", "FROM patients"),
        ("FROM visits", "FROM prescriptions"),
        ("FROM prescriptions", "FROM visits"),
    ],
}


def _edits(sql: str) -> list[Callable[[], str]]:
    out = []
    for pairs in _SWAPS.values():
        for old, new in pairs:
            if old in sql:
                out.append(lambda old=old, new=new: sql.replace(old, new, 1))
    # A query with none of the above: drop its WHERE clause (the wrong condition: none).
    if not out and " WHERE " in sql:
        out.append(lambda: re.sub(r" WHERE .*?(?= GROUP BY| ORDER BY| LIMIT|$)", "", sql, count=1))
    return out


def wrong_query(sql: str, rng: random.Random) -> str | None:
    """A plausible wrong version of ``sql``, or None when no edit applies."""
    edits = _edits(sql)
    rng.shuffle(edits)
    for edit in edits:
        wrong = edit()
        if wrong != sql:
            return wrong
    return None


def demo_pairs(
    seed: int = 0, n_train: int = 600, n_eval: int = 100
) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` pair records (TRL conversational layout, the SQL scorer's meta kept)."""
    rng = random.Random(seed)
    out: tuple[list[dict], list[dict]] = ([], [])
    # The SFT demo's own split (its sizes), so that a held-out question of one is never a
    # training question of the other: SFT -> DPO is scored on the questions neither saw.
    train, evals = demo_splits(seed, SFT_DEMO_SIZES[0], SFT_DEMO_SIZES[1])
    for rows, convs in zip(out, (train[:n_train], evals[:n_eval]), strict=True):
        for conv in convs:
            wrong = wrong_query(conv.answer, rng)
            if wrong is None:
                continue
            rows.append(pair_record(conv, wrong))
    return out


def pair_record(conv: Conversation, rejected: str) -> dict:
    """A TRL conversational pair: ``conv``'s prompt, its reference answer as the chosen side,
    ``rejected`` as the other; ``conv.meta`` kept for the task's scorer."""
    return {
        "prompt": [{"role": t.role, "content": t.content} for t in conv.prompt_turns],
        "chosen": [{"role": "assistant", "content": conv.answer}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "meta": conv.meta,
    }


def write_demo_pairs(
    directory: str | Path, seed: int = 0, n_train: int = 600, n_eval: int = 100
) -> tuple[Path, Path]:
    """Write ``clinic_pairs.jsonl`` and ``clinic_pairs_eval.jsonl`` into ``directory``."""
    directory = Path(directory)
    train, evals = demo_pairs(seed, n_train, n_eval)
    return (
        write_jsonl(directory / "clinic_pairs.jsonl", train),
        write_jsonl(directory / "clinic_pairs_eval.jsonl", evals),
    )
