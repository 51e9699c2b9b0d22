"""Question templates: enough of them, every gold query answers, sampling is deterministic."""

from __future__ import annotations

import re

from tunesmith.demo import clinic
from tunesmith.demo.questions import generate_pairs, instances
from tunesmith.demo.sql_text import has_top_level_order_by
from tunesmith.demo.templates import TEMPLATES

SQL_FEATURES = {
    "join": r"\bJOIN\b",
    "group by": r"\bGROUP BY\b",
    "order by + limit": r"\bORDER BY\b.*\bLIMIT\b",
    "count": r"\bCOUNT\(",
    "avg": r"\bAVG\(",
    "sum": r"\bSUM\(",
    "min/max": r"\b(MIN|MAX)\(",
    "range": r"\bBETWEEN\b|[<>]",
    "date": r"strftime\('%Y'",
}


def test_at_least_15_templates_with_several_phrasings_and_all_features():
    assert len(TEMPLATES) >= 15
    assert len({t.name for t in TEMPLATES}) == len(TEMPLATES)
    assert all(3 <= len(t.phrasings) <= 5 for t in TEMPLATES)
    every_sql = [ex.sql for fillings in instances(0).values() for f in fillings for ex in f]
    for feature, pattern in SQL_FEATURES.items():
        assert any(re.search(pattern, s) for s in every_sql), feature


def test_every_gold_query_runs_and_has_a_nontrivial_answer():
    conn = clinic.master(0)
    per_template = instances(0)
    assert set(per_template) == {t.name for t in TEMPLATES}
    for name, fillings in per_template.items():
        assert fillings, f"{name} has no usable slot filling"
        for filling in fillings:
            assert len({ex.sql for ex in filling}) == 1  # phrasings share one query
            rows = conn.execute(filling[0].sql).fetchall()
            assert rows and rows not in ([(None,)], [(0,)]), filling[0]


def test_ranked_questions_have_no_ties_at_the_cut():
    conn = clinic.master(0)
    ranked = [f[0].sql for fs in instances(0).values() for f in fs if "LIMIT" in f[0].sql]
    assert ranked
    for sql in ranked:
        assert has_top_level_order_by(sql)
        head, k = sql.rsplit(" LIMIT ", 1)
        keys = [r[-1] for r in conn.execute(f"{head} LIMIT {int(k) + 1}")]
        assert len(set(keys)) == len(keys), sql


def test_sql_is_canonical_and_short():
    for fillings in instances(0).values():
        sql = fillings[0][0].sql
        assert sql == sql.strip() and "  " not in sql and not sql.endswith(";")
        # Keywords upper case, everything outside literals otherwise lower case.
        outside = re.sub(r"'[^']*'", "''", sql)
        words = re.findall(r"[A-Za-z_]+", outside)
        assert all(w.isupper() or w.islower() for w in words), sql
        assert len(sql.split()) <= 30, sql


def test_generate_pairs_is_deterministic_distinct_and_balanced():
    a, b, c = generate_pairs(0, 300), generate_pairs(0, 300), generate_pairs(1, 300)
    assert a == b and a != c
    assert len(a) == 300 and len({ex.question for ex in a}) == 300
    # Round-robin over templates: the first len(TEMPLATES) examples cover all of them.
    assert {ex.template for ex in a[: len(TEMPLATES)]} == {t.name for t in TEMPLATES}
