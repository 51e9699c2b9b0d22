"""Text-to-SQL scoring: execution accuracy and exact match against the clinic database.

Execution accuracy (as in Spider, Yu et al. 2018, https://arxiv.org/abs/1809.08887, and
BIRD) counts a prediction correct when it returns the same result as the gold query on the
database, whatever its wording. Here results are compared as multisets of rows, in order
only when the gold query has a top-level ORDER BY, and floats within a small tolerance.

Predictions are untrusted: each one runs on a fresh in-memory copy of the database, under
an authorizer that only permits reading, with a row cap and a time limit enforced by
sqlite's progress handler, so neither a ``DROP TABLE`` nor a runaway cartesian join can
affect the next prediction.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
import time
from collections.abc import Sequence
from typing import NamedTuple

from tunesmith.demo import clinic
from tunesmith.demo.sql_text import (
    has_top_level_order_by,
    normalize_sql,
    split_statement,
    sql_tokens,
)
from tunesmith.errors import DataError, UserInputError

# Relative/absolute float tolerance: absorbs summation-order noise (~1e-12), not rounding
# to cents (a ROUND(x, 2) answer differs by up to 5e-3 and is a different answer).
REL_TOL = 1e-6
ABS_TOL = 1e-9
# How many VM instructions between two time checks; ~1000 keeps the check overhead
# negligible while stopping within a millisecond or so of the deadline.
_PROGRESS_STEPS = 1000
# Longest string/blob a query may build: stops e.g. zeroblob(10**9) from eating memory.
_MAX_VALUE_BYTES = 1_000_000


class SqlMatch(NamedTuple):
    """The verdict on one prediction.

    Attributes:
        match: The prediction returns the gold result (execution accuracy).
        error: Why the prediction could not be run (syntax error, timeout, not a single
            SELECT); ``None`` when it ran, whether or not its result matched.
        exact: The prediction equals the gold query after
            :func:`~tunesmith.demo.sql_text.normalize_sql`.
    """

    match: bool
    error: str | None = None
    exact: bool = False


_FENCE = re.compile(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
_INLINE = re.compile(r"`((?:SELECT|WITH)\b[^`]*)`", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:sql(?:ite)?(?:\s+query)?|query|answer)\s*:\s*", re.IGNORECASE)
_START = re.compile(r"\b(?:SELECT|WITH)\b", re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The SQL query in a model generation.

    Takes the first fenced code block if there is one (else an inline code span that
    starts with SELECT/WITH), drops a leading ``SQL:`` / ``Query:`` / ``Answer:`` label,
    skips prose before the first SELECT/WITH, and stops at the end of the first statement
    (a ``;`` outside quotes, a blank line, or a chat special token such as ``<|im_end|>``).

    Args:
        text: The decoded generation.

    Returns:
        The query without a trailing semicolon, stripped; ``""`` when the text is empty.
    """
    fence = _FENCE.search(text)
    inline = _INLINE.search(text)
    if fence:
        text = fence.group(1)
    elif inline:  # "you can use `SELECT ...` to ..."
        text = inline.group(1)
    text = text.split("<|", 1)[0]
    while (label := _LABEL.match(text)) is not None:
        text = text[label.end() :]
    start = _START.search(text)
    # Skip prose before the query ("Here is the query: SELECT ..."), but keep a statement
    # that starts with another verb (DELETE ... WHERE id IN (SELECT ...)) so it is judged
    # as the non-SELECT it is.
    if start and not _starts_with_sql_verb(text[: start.start()]):
        text = text[start.start() :]
    text, _ = split_statement(text)
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    return text.strip()


_SQL_VERBS = (
    "delete",
    "drop",
    "update",
    "insert",
    "create",
    "alter",
    "pragma",
    "attach",
    "replace",
)


def _starts_with_sql_verb(head: str) -> bool:
    words = head.split(None, 1)
    return bool(words) and words[0].lower() in _SQL_VERBS


# sqlite3 authorizer action codes a read-only query needs; everything else is denied.
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _read_only(action: int, *_args: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _run(sql: str, db_seed: int, timeout_s: float, max_rows: int | None) -> list[tuple]:
    """Run one query on a fresh read-only copy; raises sqlite3.Error or TimeoutError.

    Fetches at most ``max_rows + 1`` rows: a result longer than the gold one is already
    wrong, and not materialising it keeps a huge cartesian product cheap.
    """
    conn = clinic.fresh_copy(db_seed)
    try:
        if hasattr(conn, "setlimit"):  # Python >= 3.11
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
        conn.set_authorizer(_read_only)
        deadline = time.monotonic() + timeout_s
        timed_out = False

        def over_time() -> int:
            nonlocal timed_out
            timed_out = time.monotonic() > deadline
            return int(timed_out)  # non-zero aborts the running statement

        conn.set_progress_handler(over_time, _PROGRESS_STEPS)
        try:
            cur = conn.execute(sql)
            return cur.fetchall() if max_rows is None else cur.fetchmany(max_rows + 1)
        except sqlite3.OperationalError:
            if timed_out:
                raise TimeoutError(f"query ran longer than {timeout_s:g} s") from None
            raise
    finally:
        conn.close()


@functools.lru_cache(maxsize=8192)
def _gold(gold_sql: str, db_seed: int, timeout_s: float) -> tuple[tuple[tuple, ...], bool]:
    """Gold rows and whether order matters; cached because every eval pass re-asks them."""
    try:
        rows = _run(gold_sql, db_seed, timeout_s, max_rows=None)
    except (sqlite3.Error, TimeoutError) as exc:
        raise DataError(f"gold SQL does not run ({exc}): {gold_sql}") from None
    return tuple(rows), has_top_level_order_by(gold_sql)


def _sort_key(row: tuple) -> tuple:
    # Type rank first so mixed-type columns sort without TypeError; floats rounded coarser
    # than the tolerance so values that compare equal sort to the same place.
    def key(v: object) -> tuple:
        if v is None:
            return (0, 0)
        if isinstance(v, (int, float)):
            return (1, round(float(v), 4))
        return (2, str(v)) if isinstance(v, str) else (3, bytes(v))  # type: ignore[arg-type]

    return tuple(key(v) for v in row)


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return a == b


def results_match(pred: Sequence[tuple], gold: Sequence[tuple], ordered: bool) -> bool:
    """Equal as row multisets (as row lists when ``ordered``), floats within tolerance."""
    if len(pred) != len(gold):
        return False
    if not ordered:
        pred, gold = sorted(pred, key=_sort_key), sorted(gold, key=_sort_key)
    return all(
        len(p) == len(g) and all(_same_value(a, b) for a, b in zip(p, g, strict=True))
        for p, g in zip(pred, gold, strict=True)
    )


def execution_match(
    pred_sql: str, gold_sql: str, db_seed: int = 0, timeout_s: float = 2.0
) -> SqlMatch:
    """Whether ``pred_sql`` returns the same result as ``gold_sql`` on the seeded clinic db.

    Args:
        pred_sql: The predicted query (already extracted; see :func:`extract_sql`).
        gold_sql: The reference query; it must run, else :class:`DataError`.
        db_seed: Seed of the clinic database both run on.
        timeout_s: Wall-clock limit per query.

    Returns:
        ``SqlMatch(match, error, exact)``; ``error`` names why the prediction did not run.
    """
    gold_rows, ordered = _gold(gold_sql, db_seed, timeout_s)
    exact = normalize_sql(pred_sql) == normalize_sql(gold_sql)
    statement, rest = split_statement(pred_sql.strip())
    if not statement.strip():
        return SqlMatch(False, "empty query", exact)
    if rest.strip(" \t\n;"):
        return SqlMatch(False, "more than one statement", exact)
    head = sql_tokens(statement)[0].lower()
    if head not in ("select", "with", "values"):
        return SqlMatch(False, f"not a SELECT query (starts with {head.upper()})", exact)
    try:
        rows = _run(statement, db_seed, timeout_s, max_rows=len(gold_rows))
    except TimeoutError as exc:
        return SqlMatch(False, f"timeout: {exc}", exact)
    except sqlite3.Error as exc:
        return SqlMatch(False, f"{type(exc).__name__}: {exc}", exact)
    return SqlMatch(results_match(rows, gold_rows, ordered), None, exact)


def match_sql(
    preds: Sequence[str],
    golds: Sequence[str],
    db_seed: int | Sequence[int] = 0,
    timeout_s: float = 2.0,
) -> list[SqlMatch]:
    """:func:`execution_match` for each (generation, gold) pair; SQL is extracted first.

    Args:
        preds: Raw generations.
        golds: Gold queries, same length.
        db_seed: One seed for all, or one per example (e.g. each record's
            ``meta["db_seed"]``).
        timeout_s: Wall-clock limit per query.
    """
    seeds = [db_seed] * len(golds) if isinstance(db_seed, int) else list(db_seed)
    if not len(preds) == len(golds) == len(seeds):
        raise UserInputError(
            f"{len(preds)} predictions, {len(golds)} gold queries and {len(seeds)} db seeds"
        )
    return [
        execution_match(extract_sql(p), g, db_seed=seed, timeout_s=timeout_s)
        for p, g, seed in zip(preds, golds, seeds, strict=True)
    ]


def summarize_matches(matches: Sequence[SqlMatch]) -> dict[str, float | int]:
    """``{"execution_accuracy", "exact_match"}`` as fractions in [0, 1], plus ``n`` and
    ``n_errors`` (predictions that could not be run) as counts."""
    n = len(matches)
    return {
        "execution_accuracy": sum(m.match for m in matches) / n if n else 0.0,
        "exact_match": sum(m.exact for m in matches) / n if n else 0.0,
        "n": n,
        "n_errors": sum(m.error is not None for m in matches),
    }


def score_sql(
    preds: Sequence[str],
    golds: Sequence[str],
    db_seed: int | Sequence[int] = 0,
    timeout_s: float = 2.0,
) -> dict[str, float | int]:
    """Execution accuracy and exact match of model generations against gold queries.

    Args:
        preds: Raw generations (SQL is extracted with :func:`extract_sql`).
        golds: Gold queries, same length.
        db_seed: Seed of the clinic database, or one seed per example.
        timeout_s: Wall-clock limit per query.

    Returns:
        See :func:`summarize_matches`.
    """
    return summarize_matches(match_sql(preds, golds, db_seed=db_seed, timeout_s=timeout_s))
