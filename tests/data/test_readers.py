"""Every format (alpaca, messages, sharegpt) in every container (JSONL, JSON, CSV, Parquet)."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data import containers
from tunesmith.data.readers import detect_format, read_file, read_files
from tunesmith.data.records import Conversation, Turn
from tunesmith.data.validate import Invalid

ALPACA = {
    "instruction": "How many patients live in Lyon?",
    "input": "Table: patients(name, city)",
    "output": "SELECT COUNT(*) FROM patients WHERE city = 'Lyon';",
    "system": "You write SQL.",
    "meta": {
        "gold": "SELECT 1",
        "seed": 7,
        "nested": {"a": [1, 2]},
        "flag": True,
        "none": None,
        "x": -1.5e-3,
    },
}
ALPACA_TURNS = (
    Turn("system", "You write SQL."),
    Turn("user", "How many patients live in Lyon?\n\nTable: patients(name, city)"),
    Turn("assistant", "SELECT COUNT(*) FROM patients WHERE city = 'Lyon';"),
)
MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}],
        },
        {"role": "assistant", "content": "Joined."},
    ],
    "meta": {"id": 3},
}
MESSAGES_TURNS = (
    Turn("system", "Be brief."),
    Turn("user", "Hi"),
    Turn("assistant", "Hello."),
    Turn("user", "Two parts"),
    Turn("assistant", "Joined."),
)
SHAREGPT = {
    "system": "Top-level system.",
    "conversations": [
        {"from": "human", "value": "Q1"},
        {"from": "gpt", "value": "A1"},
        {"from": "user", "value": "Q2"},
        {"from": "assistant", "value": "A2"},
    ],
}
SHAREGPT_TURNS = (
    Turn("system", "Top-level system."),
    Turn("user", "Q1"),
    Turn("assistant", "A1"),
    Turn("user", "Q2"),
    Turn("assistant", "A2"),
)
CASES = [(ALPACA, ALPACA_TURNS), (MESSAGES, MESSAGES_TURNS), (SHAREGPT, SHAREGPT_TURNS)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()}
            )
    return path


@pytest.mark.parametrize(("row", "turns"), CASES, ids=["alpaca", "messages", "sharegpt"])
def test_jsonl_each_format(tmp_path, row, turns):
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])
    got = list(read_file(path))
    assert [c.turns for c in got] == [turns, turns]
    assert [c.source for c in got] == [f"{path}:1", f"{path}:2"]
    assert got[0].meta == row.get("meta", {})


@pytest.mark.parametrize(("row", "turns"), CASES, ids=["alpaca", "messages", "sharegpt"])
@pytest.mark.parametrize("chunk", [3, 7, 11, 1 << 20])
def test_json_array_each_format(tmp_path, row, turns, chunk, monkeypatch):
    # Tiny read chunks cut elements, strings and literals (true, null, numbers) at every place.
    monkeypatch.setattr(containers, "_CHUNK", chunk)
    path = tmp_path / "d.json"
    first = json.dumps(row, indent=2)
    path.write_text("[\n" + first + ",\n\n" + json.dumps(row) + "\n]\n", encoding="utf-8")
    got = list(read_file(path))
    assert [c.turns for c in got] == [turns, turns]
    second_line = 2 + first.count("\n") + 2
    assert [c.source for c in got] == [f"{path}:2", f"{path}:{second_line}"]
    assert got[1].meta == row.get("meta", {})


@pytest.mark.parametrize(("row", "turns"), CASES, ids=["alpaca", "messages", "sharegpt"])
def test_csv_each_format(tmp_path, row, turns):
    path = write_csv(tmp_path / "d.csv", [row, row])
    got = list(read_file(path))
    assert [c.turns for c in got] == [turns, turns]
    assert [c.source for c in got] == [f"{path}:row 1", f"{path}:row 2"]
    assert got[0].meta == row.get("meta", {})


@pytest.mark.parametrize(("row", "turns"), CASES, ids=["alpaca", "messages", "sharegpt"])
def test_parquet_each_format(tmp_path, row, turns):
    path = tmp_path / "d.parquet"
    flat = {k: v for k, v in row.items() if k != "meta"}
    if "messages" in flat:  # Arrow columns cannot mix strings and lists of parts
        flat["messages"] = [{"role": t.role, "content": t.content} for t in turns]
    pq.write_table(pa.Table.from_pylist([flat, flat]), path)
    got = list(read_file(path))
    assert [c.turns for c in got] == [turns, turns]
    assert [c.source for c in got] == [f"{path}:row 1", f"{path}:row 2"]


def test_parquet_meta_as_json_text(tmp_path):
    path = tmp_path / "d.parquet"
    row = {"instruction": "q", "output": "a", "meta": json.dumps({"k": [1]})}
    pq.write_table(pa.Table.from_pylist([row]), path)
    assert next(read_file(path)).meta == {"k": [1]}


def test_detect_format_per_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [ALPACA])
    b = write_jsonl(tmp_path / "b.jsonl", [SHAREGPT])
    got = list(read_files([a, b]))
    assert [c.turns for c in got] == [ALPACA_TURNS, SHAREGPT_TURNS]
    assert detect_format(MESSAGES) == "messages"
    assert detect_format({"foo": 1}) is None


def test_format_override_reports_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [MESSAGES])
    (bad,) = list(read_file(path, format="alpaca"))
    assert isinstance(bad, Invalid)
    assert (bad.where, bad.kind, bad.reason) == (
        f"{path}:1",
        "missing_field",
        "missing field 'instruction'",
    )


def test_unknown_extension_is_sniffed(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text(json.dumps([ALPACA]), encoding="utf-8")
    assert [c.turns for c in read_file(path)] == [ALPACA_TURNS]
    path.write_text(json.dumps(ALPACA) + "\n", encoding="utf-8")
    assert [c.turns for c in read_file(path)] == [ALPACA_TURNS]


def test_reading_is_lazy(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA] * 3)
    it = read_file(path)
    first = next(it)
    assert isinstance(first, Conversation)
    # The file can change under a running reader without the first records being re-read:
    # records come one at a time, nothing is loaded up front.
    assert sum(1 for _ in it) == 2


def test_json_file_with_bare_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps(ALPACA, indent=1) + "\n" + json.dumps(ALPACA) + "\n", encoding="utf-8"
    )
    got = list(read_file(path))
    assert [c.turns for c in got] == [ALPACA_TURNS, ALPACA_TURNS]
    assert got[1].source == f"{path}:{json.dumps(ALPACA, indent=1).count(chr(10)) + 2}"


def test_csv_field_over_128k(tmp_path):
    long = "word " * 60_000  # 300 kB, over the csv module's default field limit
    path = write_csv(tmp_path / "d.csv", [{"instruction": "q", "output": long}])
    (conv,) = list(read_file(path))
    assert conv.answer == long
