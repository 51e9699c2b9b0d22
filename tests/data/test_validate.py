"""Every bad-input case: the reason and the exact file:line (or file:row) it is reported at."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.readers import read_file
from tunesmith.data.records import Conversation, Turn
from tunesmith.data.validate import Invalid, Tally, check_conversation
from tunesmith.errors import DataError

GOOD = {"instruction": "q", "output": "a"}


def _only_invalid(path, **kw):
    """Read ``path``; return the single Invalid record and check the good ones around it."""
    records = list(read_file(path, **kw))
    bad = [r for r in records if isinstance(r, Invalid)]
    assert len(bad) == 1, records
    assert all(isinstance(r, Conversation) for r in records if r is not bad[0])
    return bad[0]


def _jsonl(tmp_path, middle: bytes, good_row=GOOD) -> object:
    path = tmp_path / "d.jsonl"
    good = json.dumps(good_row).encode()
    path.write_bytes(good + b"\n" + middle + b"\n" + good + b"\n")
    return path


JSONL_CASES = [
    (
        b'{"instruction": "q", "output": ',
        "invalid_json",
        "invalid JSON: Expecting value (column 32)",
    ),
    (
        b'{"instruction": "q\xff", "output": "a"}',
        "invalid_utf8",
        "invalid UTF-8 (byte 0xff at byte 19)",
    ),
    (b'["instruction", "output"]', "wrong_type", "a record must be a JSON object, got list"),
    (b'{"instruction": "q"}', "missing_field", "missing field 'output'"),
    (
        b'{"instruction": "q", "output": 5}',
        "wrong_type",
        "field 'output' must be a string, got int",
    ),
    (
        b'{"instruction": "q", "output": "a", "meta": [1]}',
        "wrong_type",
        "field 'meta' must be an object, got list",
    ),
    (b'{"instruction": "q", "output": "  "}', "empty_answer", "the assistant answer is empty"),
    (b'{"instruction": "", "output": "a"}', "empty_prompt", "turn 1 (user) is empty"),
    (
        b'{"instruction": "q", "output": "a\\u0007b"}',
        "control_characters",
        "control character U+0007 at char 1 in turn 2 (assistant)",
    ),
    (b'{"question": "q", "answer": "a"}', "missing_field", "missing field 'instruction'"),
]


@pytest.mark.parametrize(
    ("middle", "kind", "reason"),
    JSONL_CASES,
    ids=[c[1] + str(i) for i, c in enumerate(JSONL_CASES)],
)
def test_jsonl_bad_record(tmp_path, middle, kind, reason):
    path = _jsonl(tmp_path, middle)
    bad = _only_invalid(path)
    assert (bad.file, bad.line, bad.kind) == (str(path), 2, kind)
    assert bad.where == f"{path}:2"
    if reason:
        assert bad.reason == reason


def _messages(turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


TURN_CASES = [
    (
        _messages([("user", "q"), ("user", "q2"), ("assistant", "a")]),
        "bad_role_order",
        "turn 2 is 'user', expected 'assistant'",
    ),
    (_messages([("assistant", "a")]), "bad_role_order", "turn 1 is 'assistant', expected 'user'"),
    (
        _messages([("user", "q"), ("assistant", "a"), ("user", "q2")]),
        "bad_role_order",
        "the last turn must be 'assistant'",
    ),
    (_messages([("system", "s")]), "bad_role_order", "no user or assistant turn"),
    (
        _messages([("user", "q"), ("system", "s"), ("assistant", "a")]),
        "bad_role_order",
        "turn 2 is 'system', expected 'assistant'",
    ),
    (
        _messages([("user", "q"), ("tool", "x"), ("assistant", "a")]),
        "unknown_role",
        "unknown role 'tool' in turn 2",
    ),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
        "missing_field",
        "missing messages[2].content",
    ),
    (
        {"messages": [{"role": "user", "content": "q"}, {"content": "a"}]},
        "missing_field",
        "messages[2] needs a string 'role'",
    ),
    ({"messages": "hi"}, "wrong_type", "field 'messages' must be a list, got str"),
    ({"messages": ["hi"]}, "wrong_type", "messages[1] must be an object, got str"),
    (
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]},
        "unknown_role",
        "unknown role 'bing' in turn 2",
    ),
    (
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}]},
        "wrong_type",
        "conversations[2].value must be a string, got int",
    ),
]


@pytest.mark.parametrize(
    ("row", "kind", "reason"), TURN_CASES, ids=[c[1] + str(i) for i, c in enumerate(TURN_CASES)]
)
def test_turn_problems(tmp_path, row, kind, reason):
    good = (
        _messages([("user", "q"), ("assistant", "a")])
        if "messages" in row
        else {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    )
    path = _jsonl(tmp_path, json.dumps(row).encode(), good)
    bad = _only_invalid(path, format="messages" if "messages" in row else None)
    assert (bad.line, bad.kind, bad.reason) == (2, kind, reason)


def test_unknown_format_until_a_record_fits(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"question": "q"}) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8"
    )
    bad, good = list(read_file(path))
    assert (bad.where, bad.kind) == (f"{path}:1", "unknown_format")
    assert isinstance(good, Conversation)


def test_csv_invalid_utf8_and_field_count(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'instruction,output\nq,a\nq,\xe9t\xe9\nq,a,extra\n"q","a"\n')
    records = list(read_file(path))
    bad = [r for r in records if isinstance(r, Invalid)]
    assert [(b.where, b.kind) for b in bad] == [
        (f"{path}:row 2", "invalid_utf8"),
        (f"{path}:row 3", "invalid_csv"),
    ]
    assert bad[0].reason == "invalid UTF-8 (byte 0xe9 at char 0) in turn 2 (assistant)"
    assert sum(isinstance(r, Conversation) for r in records) == 2


def test_csv_invalid_json_cell(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('messages\n"[{""role"": ""user"""\n', encoding="utf-8")
    (bad,) = list(read_file(path))
    assert (bad.where, bad.kind) == (f"{path}:row 1", "invalid_json")
    assert bad.reason.startswith("invalid JSON in column 'messages'")


def test_json_array_broken_element(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        '[\n {"instruction": "q", "output": "a"},\n {"instruction": "q" "output": "a"},\n {}\n]',
        encoding="utf-8",
    )
    records = list(read_file(path))
    assert isinstance(records[0], Conversation)
    bad = records[1]
    assert (bad.where, bad.kind) == (f"{path}:3", "invalid_json")
    assert "the rest of the file was skipped" in bad.reason
    assert len(records) == 2


def test_json_array_not_closed(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"instruction": "q", "output": "a"},\n', encoding="utf-8")
    records = list(read_file(path))
    assert isinstance(records[0], Conversation)
    assert (records[1].where, records[1].kind) == (f"{path}:2", "invalid_json")


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        list(read_file(path))


def test_check_conversation_accepts_multi_turn_with_system():
    conv = Conversation(
        (
            Turn("system", "s"),
            Turn("user", "q"),
            Turn("assistant", "a"),
            Turn("user", "q"),
            Turn("assistant", "a"),
        )
    )
    assert check_conversation(conv) is None


def _bad(i):
    return Invalid("f.jsonl", i, "missing field 'output'", "missing_field")


def test_tally_fail_raises_at_first_bad_record():
    tally = Tally(on_error="fail")
    tally.good()
    with pytest.raises(DataError, match=r"f.jsonl:7: missing field 'output' \(--on-error fail\)"):
        tally.bad(_bad(7))


def test_tally_share_limit():
    ok = Tally(max_invalid_share=0.2)
    for _ in range(8):
        ok.good()
    for i in range(2):
        ok.bad(_bad(i + 1))
    ok.finish()  # exactly 20% is allowed
    ok.bad(_bad(11))
    with pytest.raises(
        DataError,
        match=r"3 of 11 records are invalid \(missing_field 3\), more than the allowed share 0.2",
    ):
        ok.finish()


def test_tally_nothing_valid():
    t = Tally(max_invalid_share=1.0)
    t.bad(_bad(1))
    with pytest.raises(DataError, match="no valid records"):
        t.finish()
    with pytest.raises(DataError, match="no records found"):
        Tally().finish()
