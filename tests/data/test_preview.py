"""`tunesmith data preview`: the real CLI on a tiny model's tokenizer, checked token by token."""

import json

import pytest

from tests.tiny import make_tokenizer
from tunesmith.cli import main
from tunesmith.commands.data import CLOSE, OPEN, token_pieces
from tunesmith.data.render import FALLBACK_TEMPLATES

ANSWER = "SELECT name FROM patients WHERE city = 'Lyon'"


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        json.dumps({"instruction": "Patients in Lyon?", "output": ANSWER}),
        "{not json",
        json.dumps({"instruction": "Count visits", "output": "SELECT COUNT(*) FROM visits"}),
        json.dumps({"instruction": "Third", "output": "SELECT 3"}),
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def preview_json(capsys, *args):
    assert main(["data", "preview", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_tokens_rebuild_the_rendered_text_and_mark_the_answer(
    tiny_llama_dir, data_file, capsys
):
    out = preview_json(capsys, data_file, "--model", tiny_llama_dir, "--n", "2")
    assert [r["source"] for r in out["records"]] == [f"{data_file}:1", f"{data_file}:3"]
    assert out["invalid"] == [
        {"file": str(data_file), "line": 2, "reason": out["invalid"][0]["reason"]}
    ]
    first = out["records"][0]
    text = "".join(t["text"] for t in first["tokens"])
    assert text == (
        f"<|im_start|>user\nPatients in Lyon?<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    )
    trained = "".join(t["text"] for t in first["tokens"] if t["trained"])
    assert trained == ANSWER + "<|im_end|>"
    assert first["eos_trained"] and not first["truncated"]
    assert first["num_tokens"] == len(first["tokens"])  # every piece is one token here
    assert first["trained_share"] == pytest.approx(
        first["num_trained"] / first["num_tokens"], abs=1e-4
    )
    s = out["summary"]
    assert s["records"] == 2 and s["eos_trained_records"] == 2
    total = sum(r["num_tokens"] for r in out["records"])
    assert s["trained_share"] == pytest.approx(
        sum(r["num_trained"] for r in out["records"]) / total, abs=1e-4
    )


def test_fallback_template_flag_replaces_the_model_template(tiny_llama_dir, data_file, capsys):
    out = preview_json(
        capsys, data_file, "--model", tiny_llama_dir, "--n", "1", "--template", "alpaca"
    )
    assert out["template"] == "alpaca"
    tokens = out["records"][0]["tokens"]
    assert "".join(t["text"] for t in tokens) == (
        f"### Instruction:\nPatients in Lyon?\n\n### Response:\n{ANSWER}<|im_end|>\n\n"
    )
    assert "".join(t["text"] for t in tokens if t["trained"]) == ANSWER + "<|im_end|>"
    assert "alpaca" in FALLBACK_TEMPLATES


def test_truncation_is_reported_and_a_cut_answer_has_no_trained_token(
    tiny_llama_dir, data_file, capsys
):
    out = preview_json(capsys, data_file, "--model", tiny_llama_dir, "--n", "1", "--seq-len", "8")
    r = out["records"][0]
    assert r["truncated"] and r["num_tokens"] == 8 and r["num_trained"] == 0
    assert out["summary"]["no_trained_token_records"] == 1
    assert out["summary"]["eos_trained_records"] == 0


def test_plain_output_marks_trained_tokens(tiny_llama_dir, data_file, capsys):
    assert (
        main(["data", "preview", str(data_file), "--model", str(tiny_llama_dir), "--n", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert f"assistant\n{OPEN}{ANSWER}<|im_end|>{CLOSE}\n" in text
    assert "trained (" in text and "EOS trained" in text and "trained share" in text
    assert "skipped" not in text  # --n 1 stops before the broken line


def test_default_file_is_the_demo_data(tiny_llama_dir, capsys):
    out = preview_json(capsys, "--model", tiny_llama_dir, "--n", "2")
    assert [r["source"] for r in out["records"]] == ["clinic-demo-train:1", "clinic-demo-train:2"]
    assert all(r["eos_trained"] and r["num_trained"] > 0 for r in out["records"])


def test_pieces_keep_multibyte_characters_whole():
    tok = make_tokenizer()
    ids = tok("café 🙂 SELECT", add_special_tokens=False)["input_ids"]
    # The tiny byte-level BPE splits 🙂 into byte tokens that decode to U+FFFD on their own.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    pieces = token_pieces(tok, ids, [False] * (len(ids) - 1) + [True])
    assert "".join(p["text"] for p in pieces) == "café 🙂 SELECT"
    assert all("\ufffd" not in p["text"] for p in pieces)
    assert [p["trained"] for p in pieces].count(True) == 1


def test_usage_errors_exit_2(tiny_llama_dir, tmp_path, capsys):
    assert main(["data"]) == 2
    assert (
        main(["data", "preview", str(tmp_path / "missing.jsonl"), "--model", str(tiny_llama_dir)])
        == 2
    )
    assert main(["data", "preview", "--n", "0", "--model", str(tiny_llama_dir)]) == 2
