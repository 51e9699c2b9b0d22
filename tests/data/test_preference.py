"""Preference data: every pair layout parsed, cleaned, and masked on both sides."""

from __future__ import annotations

import json

import pytest

from tests.tiny import make_tokenizer
from tunesmith.data.preference import (
    PreferencePair,
    UnpairedExample,
    detect_preference_format,
    parse_preference,
    read_preference_file,
)
from tunesmith.data.preference_clean import clean_preferences, tokenize_pair, tokenize_unpaired
from tunesmith.data.validate import Invalid
from tunesmith.errors import DataError

Q, GOOD, BAD = "How many patients live in Lyon?", "SELECT COUNT(*) FROM patients;", "SELECT 1;"
LAYOUTS = {
    "trl standard": {"prompt": Q, "chosen": GOOD, "rejected": BAD},
    "trl conversational": {
        "prompt": [{"role": "user", "content": Q}],
        "chosen": [{"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "assistant", "content": BAD}],
    },
    "trl implicit prompt": {
        "chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": BAD}],
    },
    "llama-factory alpaca": {"instruction": Q, "input": "", "chosen": GOOD, "rejected": BAD},
    "llama-factory sharegpt": {
        "conversations": [{"from": "human", "value": Q}],
        "chosen": {"from": "gpt", "value": GOOD},
        "rejected": {"from": "gpt", "value": BAD},
    },
    "axolotl chatml.intel": {"question": Q, "chosen": GOOD, "rejected": BAD},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_pair_layout_parses_to_the_same_pair(layout):
    row = LAYOUTS[layout]
    assert detect_preference_format(row) == "pairs"
    pair = parse_preference(row, "f:1")
    assert isinstance(pair, PreferencePair), pair
    assert [(t.role, t.content) for t in pair.prompt] == [("user", Q)]
    assert (pair.chosen, pair.rejected) == (GOOD, BAD)


def test_kto_unpaired_and_system_prompt():
    ex = parse_preference({"prompt": Q, "completion": GOOD, "label": False}, "f:2")
    assert isinstance(ex, UnpairedExample) and ex.desirable is False
    pair = parse_preference(
        {"system": "be brief", "question": Q, "chosen": GOOD, "rejected": BAD}, "f:3"
    )
    assert [t.role for t in pair.prompt] == ["system", "user"]
    assert (
        parse_preference({"prompt": Q, "completion": GOOD, "label": "yes"}, "f")[0] == "wrong_type"
    )


def test_empty_side_is_refused_on_either_side(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": Q, "chosen": GOOD, "rejected": "  "},
        {"prompt": Q, "chosen": "", "rejected": BAD},
        {"x": 1},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = list(read_preference_file(path))
    assert all(isinstance(g, Invalid) for g in got)
    assert [g.kind for g in got] == ["empty_answer", "empty_answer", "unknown_format"]
    assert got[0].reason.startswith("rejected:") and got[1].reason.startswith("chosen:")


def test_clean_drops_duplicates_identical_sides_and_eval_leaks():
    a = parse_preference({"prompt": Q, "chosen": GOOD, "rejected": BAD}, "f:1")
    dup = parse_preference({"prompt": Q, "chosen": GOOD + " ", "rejected": BAD}, "f:2")
    same = parse_preference({"prompt": "q2", "chosen": GOOD, "rejected": GOOD}, "f:3")
    leak = parse_preference({"prompt": "held out", "chosen": GOOD, "rejected": BAD}, "f:4")
    held = parse_preference({"prompt": "held out", "chosen": "x", "rejected": "y"}, "e:1")
    kept, report = clean_preferences([a, dup, same, leak], eval_records=[held])
    assert kept == [a]
    assert (
        report.input_records,
        report.kept,
        report.exact_duplicates,
        report.identical_sides,
        report.eval_leaks,
    ) == (
        4,
        1,
        1,
        1,
        1,
    )
    assert [r["source"] for r in report.removed] == ["f:2", "f:3", "f:4"]


def test_tokenized_pair_shares_the_prompt_and_trains_eos_on_both_sides():
    tok = make_tokenizer()
    pair = parse_preference(LAYOUTS["trl standard"], "f:1")
    prompt, chosen, rejected = tokenize_pair(tok, pair, seq_len=256)
    assert chosen[-1] == rejected[-1] == tok.eos_token_id
    assert tok.decode(prompt).endswith("assistant\n")
    assert tok.decode(chosen).startswith(GOOD) and tok.decode(rejected).startswith(BAD)
    with pytest.raises(DataError, match="no trained token"):
        tokenize_pair(tok, pair, seq_len=len(prompt))
    ex = parse_preference({"prompt": Q, "completion": GOOD, "label": True}, "f")
    assert tokenize_unpaired(tok, ex, 256) == (prompt, chosen)


def test_data_preview_shows_both_sides_of_a_pair(tiny_llama_dir, tmp_path, capsys):
    from tunesmith.cli import main

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(LAYOUTS["trl conversational"]) + "\n")
    assert main(["data", "preview", str(path), "--model", str(tiny_llama_dir), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert [r["source"].rsplit(" ", 1)[1] for r in records] == ["(chosen)", "(rejected)"]
    assert all(r["eos_trained"] for r in records)
