"""Demo splits (no leakage) and the raw file (planted dirt, deterministic bytes)."""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import combinations

import pytest

from tunesmith.demo.dataset import (
    EVAL_GAP_JACCARD,
    NEAR_DUP_JACCARD,
    SYSTEM_PROMPT,
    demo_splits,
    normalize_question,
    raw_demo,
    write_demo_eval,
    write_demo_files,
    write_raw_demo,
)
from tunesmith.demo.sql_text import normalize_sql
from tunesmith.demo.templates import TEMPLATES
from tunesmith.eval.sql import score_sql


@pytest.fixture(scope="module")
def splits():
    return demo_splits(0)


def test_split_sizes_roles_and_meta(splits):
    train, evals = splits
    assert (len(train), len(evals)) == (3000, 200)
    for conv in (*train, *evals):
        assert [t.role for t in conv.turns] == ["system", "user", "assistant"]
        assert conv.turns[0].content == SYSTEM_PROMPT
        assert conv.meta["task"] == "clinic-sql" and conv.meta["db_seed"] == 0
    assert "CREATE TABLE" not in SYSTEM_PROMPT  # the schema is what fine-tuning teaches


def test_split_has_no_leakage_and_eval_covers_every_template(splits):
    train, evals = splits
    train_q = {normalize_question(c.turns[1].content) for c in train}
    train_sql = {normalize_sql(c.answer) for c in train}
    assert not any(normalize_question(c.turns[1].content) in train_q for c in evals)
    assert not any(normalize_sql(c.answer) in train_sql for c in evals)
    assert {c.meta["template"] for c in evals} == {t.name for t in TEMPLATES}
    # The clean splits themselves carry no duplicates.
    assert len({c.turns[1].content for c in train}) == len(train)
    assert len({c.turns[1].content for c in evals}) == len(evals)


def _shingles(conv):
    # Independent of the generator's code: word 3-grams of question + SQL, case-folded.
    words = re.findall(r"\w+", f"{conv.turns[1].content}\n{conv.answer}".casefold())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def test_no_near_duplicates_across_the_split_or_within_train(splits):
    train, evals = splits
    by_template: dict[str, list[set]] = {}
    for conv in train:
        by_template.setdefault(conv.meta["template"], []).append(_shingles(conv))
    # Records of different templates share little text; compare within a template (exact
    # Jaccard, no MinHash estimate).
    worst = max(
        len(e & t) / len(e | t)
        for conv in evals
        for e in [_shingles(conv)]
        for t in by_template.get(conv.meta["template"], [])
    )
    assert 0.5 < worst < EVAL_GAP_JACCARD < NEAR_DUP_JACCARD
    # Nor are training records near duplicates of each other (a sample, same reasoning).
    worst_train = max(
        len(a & b) / len(a | b)
        for sets in by_template.values()
        for i, a in enumerate(sets[:10])
        for b in sets[i + 1 :]
    )
    assert 0.5 < worst_train < NEAR_DUP_JACCARD


def test_eval_golds_score_perfectly_against_themselves(splits):
    _, evals = splits
    golds = [c.answer for c in evals]
    scores = score_sql(golds, golds)
    assert scores == {"execution_accuracy": 1.0, "exact_match": 1.0, "n": 200, "n_errors": 0}


def test_raw_file_is_byte_identical_per_seed_and_differs_across_seeds(tmp_path):
    a = write_raw_demo(tmp_path / "a.jsonl", seed=0).read_bytes()
    b = write_raw_demo(tmp_path / "b.jsonl", seed=0).read_bytes()
    c = write_raw_demo(tmp_path / "c.jsonl", seed=1).read_bytes()
    assert a == b and a != c
    e0 = write_demo_eval(tmp_path / "e0.jsonl", seed=0).read_bytes()
    assert e0 == write_demo_eval(tmp_path / "e1.jsonl", seed=0).read_bytes()
    assert e0 != write_demo_eval(tmp_path / "e2.jsonl", seed=1).read_bytes()
    assert [json.loads(x) for x in e0.decode().splitlines()][0]["meta"]["task"] == "clinic-sql"


def test_write_demo_files_writes_both_files_and_nothing_else(tmp_path):
    raw, evals = write_demo_files(tmp_path / "data", seed=0, n_train=300, n_eval=40)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted([raw.name, evals.name])
    assert len(raw.read_text().splitlines()) == 300 + 9 + 6 + 8  # clean + 3% + 2% + broken
    assert len(evals.read_text().splitlines()) == 40


def _problem(line: str) -> str | None:
    """An independent validator: why a raw line is unusable, or None."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return "invalid json"
    msgs = rec.get("messages")
    if not isinstance(msgs, list):
        return "wrong type"
    if any(not isinstance(m.get("content"), str) for m in msgs if "content" in m):
        return "wrong type"
    if any("content" not in m for m in msgs):
        return "missing field"
    if not msgs or msgs[-1]["role"] != "assistant":
        return "missing answer"
    if not msgs[-1]["content"].strip():
        return "empty answer"
    return None


def test_raw_file_contains_the_planted_duplicates_and_broken_records(tmp_path):
    path = write_raw_demo(tmp_path / "raw.jsonl", seed=0)
    lines = path.read_text(encoding="utf-8").splitlines()
    problems = {i + 1: p for i, line in enumerate(lines) if (p := _problem(line))}
    assert 5 <= len(problems) <= 10
    assert Counter(problems.values()) == {
        "invalid json": 2,
        "wrong type": 2,
        "missing answer": 1,
        "missing field": 1,
        "empty answer": 2,
    }
    good = [json.loads(line) for i, line in enumerate(lines) if i + 1 not in problems]
    exact = len(good) - len({json.dumps(r, sort_keys=True) for r in good})
    assert exact == 90  # 3% of 3000
    # Near duplicates: same SQL, and questions that differ only in case, spacing or
    # punctuation, or in exactly one word. Distinct phrasings of one query differ in more.
    by_sql: dict[str, list[list[str]]] = {}
    for r in {json.dumps(r, sort_keys=True): r for r in good}.values():
        words = normalize_question(r["messages"][1]["content"]).split()
        by_sql.setdefault(r["messages"][2]["content"], []).append(words)
    near = sum(
        len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) <= 1
        for qs in by_sql.values()
        for a, b in combinations(qs, 2)
    )
    assert near == 60  # 2% of 3000
    planted = raw_demo(0)
    assert len(planted.exact_duplicates) == 90 and len(planted.near_duplicates) == 60
    assert set(planted.broken) == set(problems)


def test_near_duplicates_never_leak_eval(splits):
    _, evals = splits
    eval_sql = {normalize_sql(c.answer) for c in evals}
    planted = raw_demo(0)
    for n in planted.near_duplicates:
        rec = json.loads(planted.lines[n - 1])
        assert normalize_sql(rec["messages"][2]["content"]) not in eval_sql
