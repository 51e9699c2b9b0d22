"""Every question the templates can ask of a seeded clinic database, and balanced samples.

Only slot fillings with a non-trivial answer are kept, so every question has a real answer;
ranked questions are kept only when the ranking has no ties (see :mod:`.templates` for the
templates and their house style).
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable, Iterator

from tunesmith.demo import clinic
from tunesmith.demo.slots import Example, Slots, Template
from tunesmith.demo.templates import TEMPLATES


def _has_answer(conn: sqlite3.Connection, sql: str) -> bool:
    """True when the query returns rows and not just a zero or NULL aggregate."""
    rows = conn.execute(sql).fetchall()
    return bool(rows) and rows != [(None,)] and rows != [(0,)]


def _ranking_is_unique(conn: sqlite3.Connection, sql: str) -> bool:
    """For ``... ORDER BY key LIMIT k``: the top k+1 keys (last column) are all distinct.

    Ties would make both the order within the top k and the cut at k arbitrary, and then a
    correct prediction could fail an order-sensitive comparison.
    """
    head, _, k = sql.rpartition(" LIMIT ")
    keys = [row[-1] for row in conn.execute(f"{head} LIMIT {int(k) + 1}")]
    return len(set(keys)) == len(keys)


def template_slots(template: Template, conn: sqlite3.Connection) -> list[Slots]:
    """The slot fillings of ``template`` that have a real (and, if ranked, tie-free) answer."""
    kept = []
    for slots in template.slots(conn):
        sql = template.sql.format(**slots)
        if not _has_answer(conn, sql):
            continue
        if " LIMIT " in sql and not _ranking_is_unique(conn, sql):
            continue
        kept.append(slots)
    return kept


def instances(seed: int = 0) -> dict[str, list[list[Example]]]:
    """Every question the templates can ask about the database built from ``seed``.

    Returns:
        template name -> one list per slot filling -> that filling in every phrasing. All
        phrasings of one filling share the same SQL, which is why a leak-free split must
        keep a filling on one side.
    """
    conn = clinic.master(seed)
    return {
        t.name: [[t.render(s, i) for i in range(len(t.phrasings))] for s in template_slots(t, conn)]
        for t in TEMPLATES
    }


def round_robin(groups: Iterable[Iterable[Example]], n: int) -> Iterator[Example]:
    """Take one item from each group in turn (dropping exhausted ones) until ``n`` are taken."""
    live = [iter(g) for g in groups]
    taken = 0
    while live and taken < n:
        for it in list(live):
            if taken == n:
                break
            item = next(it, None)
            if item is None:
                live.remove(it)
                continue
            yield item
            taken += 1


def generate_pairs(seed: int = 0, n: int = 1000) -> list[Example]:
    """``n`` distinct (question, SQL) examples, balanced over templates, deterministic per seed.

    Args:
        seed: Seeds both the database (slot values come from it) and the sampling.
        n: How many examples; fewer come back if the templates cannot produce that many.
    """
    rng = random.Random(f"pairs-{seed}")
    per_template = []
    for fillings in instances(seed).values():
        flat = [ex for filling in fillings for ex in filling]
        rng.shuffle(flat)
        per_template.append(flat)
    return list(round_robin(per_template, n))
