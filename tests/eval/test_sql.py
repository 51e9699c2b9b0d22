"""SQL scorer: execution match semantics, sandboxing, time limit, extraction, speed."""

from __future__ import annotations

import time

import pytest

from tunesmith.demo import clinic
from tunesmith.demo.dataset import demo_splits
from tunesmith.demo.sql_text import has_top_level_order_by, normalize_sql
from tunesmith.errors import DataError, UserInputError
from tunesmith.eval.sql import (
    execution_match,
    extract_sql,
    results_match,
    score_sql,
)

GOLD_COUNT = "SELECT COUNT(*) FROM visits"


def test_equivalent_query_matches_by_execution_but_not_exactly():
    gold = "SELECT first_name, last_name FROM patients WHERE city = 'Boston'"
    pred = "SELECT p.first_name, p.last_name FROM patients p WHERE p.city IN ('Boston')"
    assert execution_match(pred, gold) == (True, None, False)
    assert execution_match(gold.lower().replace("'boston'", "'Boston'"), gold).exact


def test_wrong_query_does_not_match_and_is_not_an_error():
    gold = "SELECT COUNT(*) FROM patients WHERE city = 'Boston'"
    pred = "SELECT COUNT(*) FROM patients WHERE city = 'Seattle'"
    db = clinic.master(0)
    assert db.execute(pred).fetchall() != db.execute(gold).fetchall()
    m = execution_match(pred, gold)
    assert m == (False, None, False)
    # Same rows but an extra column is a different result.
    m = execution_match("SELECT city, COUNT(*) FROM patients WHERE city = 'Boston'", gold)
    assert not m.match


@pytest.mark.parametrize(
    ("pred", "reason"),
    [
        ("SELECT * FROM no_such_table", "no such table"),
        ("SELECT COUNT(* FROM visits", "syntax error"),
        ("SELEC COUNT(*) FROM visits", "not a SELECT"),
        ("", "empty"),
        ("DELETE FROM visits", "not a SELECT"),
        ("SELECT 1; DROP TABLE visits", "more than one statement"),
    ],
)
def test_queries_that_cannot_run_report_why(pred, reason):
    m = execution_match(pred, GOLD_COUNT)
    assert not m.match and reason in m.error


def test_order_matters_only_when_gold_orders():
    unordered = "SELECT name FROM doctors WHERE specialty = 'cardiology'"
    reversed_pred = unordered + " ORDER BY name DESC"
    assert execution_match(reversed_pred, unordered).match
    asc = unordered + " ORDER BY name"
    assert execution_match(asc, asc).match
    assert not execution_match(reversed_pred, asc).match
    # ORDER BY inside a subquery does not make the outer result ordered.
    assert not has_top_level_order_by("SELECT * FROM (SELECT name FROM doctors ORDER BY name)")
    assert has_top_level_order_by("select id from visits order  by cost")


def test_multiset_semantics_count_duplicates():
    gold = "SELECT city FROM patients"
    assert not execution_match("SELECT DISTINCT city FROM patients", gold).match
    assert results_match([(1,), (1,), (2,)], [(2,), (1,), (1,)], ordered=False)
    assert not results_match([(1,), (2,), (2,)], [(2,), (1,), (1,)], ordered=False)


def test_floats_compare_within_tolerance_but_rounding_is_a_different_answer():
    gold = "SELECT AVG(cost) FROM visits"
    # Same value computed another way: summation order differs, tolerance absorbs it.
    assert execution_match("SELECT SUM(cost) / COUNT(*) FROM visits", gold).match
    assert not execution_match("SELECT ROUND(AVG(cost), 2) FROM visits", gold).match
    assert results_match([(0.1 + 0.2, "a")], [(0.3, "a")], ordered=True)
    assert results_match([(3,)], [(3.0,)], ordered=True)
    assert not results_match([(0.3001,)], [(0.3,)], ordered=True)
    assert not results_match([("3",)], [(3,)], ordered=True)


def test_runaway_query_is_stopped_by_the_time_limit():
    runaway = "SELECT COUNT(*) FROM visits a, visits b, visits c, visits d"  # 1e12 rows
    start = time.perf_counter()
    m = execution_match(runaway, GOLD_COUNT, timeout_s=0.2)
    assert time.perf_counter() - start < 1.0
    assert not m.match and m.error.startswith("timeout")
    recursive = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT MAX(n) FROM r"
    )
    assert execution_match(recursive, GOLD_COUNT, timeout_s=0.2).error.startswith("timeout")


def test_destructive_predictions_never_change_the_database():
    for attack in (
        "DROP TABLE visits",
        "DELETE FROM visits",
        "UPDATE visits SET cost = 0",
        "WITH x AS (SELECT 1) DELETE FROM visits",
        "SELECT 1; DROP TABLE visits",
        "ATTACH DATABASE 'x.db' AS x",
        "PRAGMA writable_schema = 1",
    ):
        assert not execution_match(attack, GOLD_COUNT).match
    # The next prediction sees the full database, and so does the cached master.
    assert execution_match("SELECT COUNT(*) FROM visits", GOLD_COUNT).match
    assert clinic.master(0).execute(GOLD_COUNT).fetchone() == (1000,)


def test_gold_that_fails_is_a_data_error_and_lengths_must_agree():
    with pytest.raises(DataError, match="gold SQL does not run"):
        execution_match("SELECT 1", "SELECT * FROM nowhere")
    with pytest.raises(UserInputError):
        score_sql(["SELECT 1"], [])
    with pytest.raises(UserInputError):
        score_sql(["SELECT 1"], ["SELECT 1"], db_seed=[0, 1])


def test_each_example_runs_on_its_own_seed():
    gold = "SELECT SUM(cost) FROM visits"
    pred = f"SELECT {clinic.master(1).execute(gold).fetchone()[0]!r}"  # seed 1's answer
    assert score_sql([pred, pred], [gold, gold], db_seed=[1, 0])["execution_accuracy"] == 0.5


def test_normalize_sql_ignores_whitespace_keyword_case_and_semicolon_not_literals():
    a = "SELECT COUNT(*) FROM patients WHERE city = 'Boston'"
    assert normalize_sql(
        "select count( * )\n from PATIENTS where city='Boston' ;"
    ) == normalize_sql(a)
    assert normalize_sql(a.replace("'Boston'", "'boston'")) != normalize_sql(a)
    assert normalize_sql("SELECT 'a  b'") != normalize_sql("SELECT 'a b'")


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT 1;", "SELECT 1"),
        ("```sql\nSELECT name FROM doctors;\n```", "SELECT name FROM doctors"),
        ("```\nSELECT name\nFROM doctors\n```\nThis lists doctors.", "SELECT name\nFROM doctors"),
        ("SQL: SELECT id FROM visits; -- done", "SELECT id FROM visits"),
        (
            "You can use the `SELECT * FROM patients WHERE city = 'Austin'` SQL query.",
            "SELECT * FROM patients WHERE city = 'Austin'",
        ),
        (
            "Use `COUNT()`:\n```sql\nSELECT COUNT(*) FROM visits WHERE",
            "SELECT COUNT(*) FROM visits WHERE",
        ),
        (
            "Here is the query:\nSELECT id FROM visits WHERE reason = 'a;b';",
            "SELECT id FROM visits WHERE reason = 'a;b'",
        ),
        ("SELECT id FROM visits\n\nThis query returns the ids.", "SELECT id FROM visits"),
        ("SELECT id FROM visits<|im_end|>", "SELECT id FROM visits"),
        (
            "DELETE FROM visits WHERE id IN (SELECT id FROM visits)",
            "DELETE FROM visits WHERE id IN (SELECT id FROM visits)",
        ),
        ("I don't know.", "I don't know."),
        ("", ""),
    ],
)
def test_extract_sql(text, sql):
    assert extract_sql(text) == sql


def test_score_sql_metrics_and_speed():
    _, evals = demo_splits(0)
    golds = [c.answer for c in evals]
    # A quarter: fenced, keywords lower-cased, extra spaces (exact after normalisation);
    # a quarter verbatim; half a query that errors.
    restyled = [g.replace("SELECT ", "select  ").replace(" FROM ", "\n  from ") for g in golds]
    preds = [
        f"```sql\n{r};\n```" if i % 4 == 0 else (g if i % 4 == 1 else "SELECT 1 FROM nowhere")
        for i, (g, r) in enumerate(zip(golds, restyled, strict=True))
    ]
    start = time.perf_counter()
    scores = score_sql(preds, golds)
    elapsed = time.perf_counter() - start
    assert scores == {"execution_accuracy": 0.5, "exact_match": 0.5, "n": 200, "n_errors": 100}
    assert elapsed < 2.0
