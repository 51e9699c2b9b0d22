"""The cleaner end to end: each drop reason, the eval split and leak check, the report, streaming."""

from __future__ import annotations

import json
import random

import pytest

from tests.tiny import make_tokenizer
from tunesmith.data.clean import CleanOptions, clean, clean_conversations, eval_path_for
from tunesmith.data.records import Conversation, Turn
from tunesmith.errors import ConfigError, DataError

REPORT_KEYS = {
    "input_records",
    "kept",
    "eval_kept",
    "invalid",
    "invalid_by_kind",
    "exact_duplicates",
    "near_duplicates",
    "repetitive",
    "too_long",
    "too_short",
    "eval_leaks",
    "examples",
    "duplicate_clusters",
    "eval_leak_pairs",
    "over_represented_answers",
    "options",
}

_VOCAB = [
    "patient",
    "doctor",
    "visit",
    "drug",
    "dose",
    "city",
    "name",
    "date",
    "clinic",
    "ward",
    "nurse",
    "record",
    "table",
    "count",
    "list",
    "order",
    "group",
    "year",
    "month",
    "week",
    "admission",
    "discharge",
    "allergy",
    "blood",
    "pressure",
    "heart",
    "lung",
    "test",
    "result",
    "scan",
    "report",
    "fee",
    "insurance",
    "address",
    "phone",
    "email",
    "room",
    "floor",
    "bed",
    "shift",
    "schedule",
]


def _answer(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(n))


def _conv(q: str, a: str, source: str = "", **meta) -> Conversation:
    return Conversation((Turn("user", q), Turn("assistant", a)), source, meta)


def _distinct(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    return [_conv(f"question {seed}-{i}", _answer(rng), f"mem:{i + 1}", id=i) for i in range(n)]


def _edit(text: str, k: int = 1) -> str:
    toks = text.split()
    for j in range(k):
        toks[5 + 7 * j] = "EDITED"
    return " ".join(toks)


def test_exact_duplicates_layout_and_case_variants():
    base = _distinct(5)
    dup = _conv(
        base[2].turns[0].content.upper(), "  " + base[2].answer.replace(" ", "\n", 3), "mem:dup"
    )
    res = clean_conversations([*base, dup])
    assert res.report["exact_duplicates"] == 1 and res.report["kept"] == 5
    (cluster,) = res.report["duplicate_clusters"]
    assert cluster == {
        "kind": "exact",
        "side": "train",
        "kept": "mem:3",
        "size": 2,
        "min_similarity": 1.0,
        "dropped": ["mem:dup"],
    }
    assert res.report["examples"]["exact_duplicates"][0]["source"] == "mem:dup"


def test_near_duplicate_dropped_and_not_near_kept():
    base = _distinct(6)
    near = _conv(base[0].turns[0].content, _edit(base[0].answer, 1), "mem:near")
    far = _conv(
        base[0].turns[0].content, _edit(base[0].answer, 5), "mem:far"
    )  # 5 edits in 40 words
    res = clean_conversations([*base, near, far])
    assert res.report["near_duplicates"] == 1
    assert [c.source for c in res.train] == [c.source for c in base] + ["mem:far"]
    cluster = res.report["duplicate_clusters"][0]
    assert (cluster["kind"], cluster["kept"], cluster["dropped"]) == ("near", "mem:1", ["mem:near"])
    assert 0.8 <= cluster["min_similarity"] < 1.0


def test_near_dup_threshold_is_respected():
    base = _distinct(1)
    variant = _conv(base[0].turns[0].content, _edit(base[0].answer, 5), "mem:v")
    # The variant's word-trigram Jaccard with the original is about 0.5.
    assert (
        clean_conversations([*base, variant], near_dup_threshold=0.8).report["near_duplicates"] == 0
    )
    assert (
        clean_conversations([*base, variant], near_dup_threshold=0.3).report["near_duplicates"] == 1
    )


def test_repetition_and_length_filters():
    base = _distinct(4)
    loop = _conv("say it", "I am sorry. " * 20, "mem:loop")
    short = _conv("q", "a", "mem:short")
    long = _conv("q", "word " * 400, "mem:long")
    res = clean_conversations([*base, loop, short, long], min_chars=5, max_chars=1000)
    r = res.report
    assert (r["repetitive"], r["too_short"], r["too_long"], r["kept"]) == (1, 1, 1, 4)
    assert r["examples"]["repetitive"][0]["source"] == "mem:loop"


def test_token_length_filter():
    tok = make_tokenizer()
    base = _distinct(3)
    lengths = [
        len(tok.apply_chat_template(c.to_messages(), tokenize=True)["input_ids"]) for c in base
    ]
    limit = sorted(lengths)[1]
    res = clean_conversations(base, tokenizer=tok, max_tokens=limit)
    assert res.report["too_long"] == sum(n > limit for n in lengths) == 1
    res = clean_conversations(base, tokenizer=tok, min_tokens=limit)
    assert res.report["too_short"] == 1


def test_eval_share_split_is_deterministic():
    data = _distinct(200)
    a = clean_conversations(data, eval_share=0.2, seed=1)
    b = clean_conversations(data, eval_share=0.2, seed=1)
    c = clean_conversations(data, eval_share=0.2, seed=2)
    assert [x.source for x in a.eval] == [x.source for x in b.eval]
    assert [x.source for x in a.eval] != [x.source for x in c.eval]
    assert 20 <= len(a.eval) <= 60 and len(a.train) + len(a.eval) == 200
    assert a.report["eval_kept"] == len(a.eval)


def test_leak_check_with_eval_data():
    train = _distinct(10)
    leaked_near = _conv(train[3].turns[0].content, _edit(train[3].answer), "eval:1")
    leaked_exact = _conv(train[4].turns[0].content, train[4].answer, "eval:2")
    clean_eval = _distinct(3, seed=9)
    res = clean_conversations(train, [leaked_near, leaked_exact, *clean_eval])
    assert res.report["eval_leaks"] == 2
    assert [c.source for c in res.eval] == [c.source for c in clean_eval]
    pairs = {(p["eval"], p["train"]) for p in res.report["eval_leak_pairs"]}
    assert pairs == {("eval:1", "mem:4"), ("eval:2", "mem:5")}
    assert res.report["kept"] == 10 and res.report["eval_kept"] == 3


def test_leak_when_eval_record_arrives_first_in_split():
    # With eval_share, whichever side comes first, the eval record of a near pair is dropped.
    rng = random.Random(5)
    pairs = []
    for i in range(60):
        a = _answer(rng, 80)  # one edit in 80 words: Jaccard ~0.93, well above 0.8
        pairs += [_conv(f"q{i}", a, f"a:{i}"), _conv(f"q{i}", _edit(a), f"b:{i}")]
    res = clean_conversations(pairs, eval_share=0.5, seed=3)
    train_ids = {c.source.split(":")[1] for c in res.train}
    eval_ids = {c.source.split(":")[1] for c in res.eval}
    assert not train_ids & eval_ids  # no pair straddles the split
    r = res.report
    assert r["eval_leaks"] > 0
    assert r["near_duplicates"] + r["eval_leaks"] == 60


def test_over_represented_answers():
    data = [
        _conv(f"how many rows in table {i}?", "SELECT COUNT(*) FROM t;", f"m:{i}") for i in range(5)
    ]
    res = clean_conversations([*data, *_distinct(5)])
    (top,) = res.report["over_represented_answers"]
    assert top == {"answer": "SELECT COUNT(*) FROM t;", "count": 5, "share": 0.5}


def test_generator_is_consumed_once():
    consumed = []

    def gen():
        for c in _distinct(20):
            consumed.append(c.source)
            yield c

    res = clean_conversations(gen())
    assert len(consumed) == 20 and len(res.train) == 20


def _write(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_clean_files_writes_outputs_and_report(tmp_path):
    rows = [
        {"instruction": c.turns[0].content, "output": c.answer, "meta": c.meta}
        for c in _distinct(30)
    ]
    rows.insert(3, "{broken")
    rows.append(rows[0])
    src = _write(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "out" / "train.jsonl"
    res = clean([src], out, eval_share=0.2)
    report = json.loads((tmp_path / "out" / "clean_report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["invalid"] == [
        {
            "file": str(src),
            "line": 4,
            "reason": "invalid JSON: Expecting property name enclosed in double quotes (column 2)",
            "kind": "invalid_json",
        }
    ]
    assert (report["input_records"], report["exact_duplicates"]) == (32, 1)
    train = [json.loads(x) for x in out.read_text().splitlines()]
    evals = [json.loads(x) for x in eval_path_for(out).read_text().splitlines()]
    assert len(train) + len(evals) == 30 == report["kept"] + report["eval_kept"]
    assert res.eval_path == tmp_path / "out" / "train.eval.jsonl"
    assert {r["meta"]["id"] for r in train + evals} == set(range(30))  # meta kept
    assert train[0]["messages"][0]["role"] == "user"


def test_clean_with_eval_files_drops_leaks(tmp_path):
    train = _distinct(10)
    src = _write(tmp_path / "t.jsonl", [c.to_json() for c in train])
    ev = _write(
        tmp_path / "e.jsonl",
        [
            _conv(train[0].turns[0].content, _edit(train[0].answer)).to_json(),
            *[c.to_json() for c in _distinct(2, seed=4)],
        ],
    )
    res = clean([src], tmp_path / "o.jsonl", eval_inputs=[ev], report_path=tmp_path / "r.json")
    assert res.report["eval_leaks"] == 1
    assert res.report["eval_leak_pairs"][0]["eval"] == f"{ev}:1"
    assert len((tmp_path / "o.eval.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "r.json").exists()


def test_too_many_invalid_fails_and_writes_nothing(tmp_path):
    src = _write(tmp_path / "raw.jsonl", [{"instruction": "q", "output": "a"}, "{", "{"])
    out = tmp_path / "o.jsonl"
    with pytest.raises(DataError, match=r"2 of 3 records are invalid"):
        clean([src], out)
    assert not out.exists() and not (tmp_path / "clean_report.json").exists()
    assert list(tmp_path.iterdir()) == [src]  # no temp files left behind
    clean([src], out, max_invalid_share=0.7)
    assert out.exists()


def test_on_error_fail_and_missing_file(tmp_path):
    src = _write(
        tmp_path / "raw.jsonl", [{"instruction": "q", "output": "a"}] * 9 + ['{"instruction": 1}']
    )
    with pytest.raises(DataError, match=r"raw.jsonl:10: field 'instruction' must be a string"):
        clean([src], tmp_path / "o.jsonl", on_error="fail")
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        clean([tmp_path / "missing.jsonl"], tmp_path / "o.jsonl")


def test_nothing_left_is_an_error():
    with pytest.raises(DataError, match="no training records left after cleaning"):
        clean_conversations([_conv("q", "a")], min_chars=100)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="near_dup_thresh"):
        clean_conversations(_distinct(2), near_dup_thresh=0.5)
    with pytest.raises(ConfigError, match="eval_share"):
        clean_conversations(_distinct(2), _distinct(1), eval_share=0.1)
    with pytest.raises(ConfigError, match="eval_share"):
        CleanOptions(eval_share=1.5)
    with pytest.raises(ConfigError, match="near_dup_threshold"):
        clean_conversations(_distinct(2), near_dup_threshold=0)


def test_shared_system_prompt_does_not_make_records_near():
    system = Turn("system", "You translate questions into SQL over the clinic database. " * 5)
    a = Conversation(
        (
            system,
            Turn("user", "How many doctors?"),
            Turn("assistant", "SELECT COUNT(*) FROM doctors"),
        )
    )
    b = Conversation(
        (system, Turn("user", "List the patients."), Turn("assistant", "SELECT name FROM patients"))
    )
    res = clean_conversations([a, b])
    assert res.report["near_duplicates"] == 0 and res.report["kept"] == 2


def test_on_drop_hook_sees_every_drop(tmp_path):
    train = _distinct(6)
    rows = [c.to_json() for c in train] + [train[0].to_json(), _conv("q", "a").to_json()]
    src = _write(tmp_path / "t.jsonl", rows)
    ev = _write(tmp_path / "e.jsonl", [train[1].to_json()])
    seen = []
    res = clean(
        [src],
        tmp_path / "o.jsonl",
        eval_inputs=[ev],
        min_chars=5,
        on_drop=lambda *a: seen.append(a),
    )
    # Eval is read first; train line 2 then reveals the leak of eval line 1.
    assert seen == [
        ("eval_leaks", f"{ev}:1", {"kept": f"{src}:2"}),
        ("exact_duplicates", f"{src}:7", {"kept": f"{src}:1"}),
        ("too_short", f"{src}:8", {}),
    ]
    assert res.report["eval_leaks"] == 1 and res.report["eval_kept"] == 0
