"""`tunesmith clean`: the real CLI entry point, its outputs and exit codes."""

from __future__ import annotations

import json

from tunesmith.cli import main


def _raw(tmp_path, extra=()):
    rows = [
        {"instruction": f"question {i} about the clinic", "output": f"SELECT {i} FROM visits;"}
        for i in range(20)
    ]
    lines = [json.dumps(r) for r in rows] + [json.dumps(rows[0]), *extra]
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_clean_json_output(tmp_path, capsys):
    src = _raw(tmp_path, ["{oops"])
    out = tmp_path / "data" / "train.jsonl"
    assert main(["clean", str(src), "-o", str(out), "--eval-share", "0.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["input_records"], report["exact_duplicates"], len(report["invalid"])) == (
        22,
        1,
        1,
    )
    assert report["invalid"][0]["line"] == 22
    assert report["kept"] + report["eval_kept"] == 20
    assert (tmp_path / "data" / "clean_report.json").exists()
    assert (tmp_path / "data" / "train.eval.jsonl").exists()


def test_clean_summary_table(tmp_path, capsys):
    src = _raw(tmp_path)
    report = tmp_path / "rep.json"
    assert main(["clean", str(src), "-o", str(tmp_path / "o.jsonl"), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "exact duplicates" in text and "kept (train)" in text and "20" in text
    assert json.loads(report.read_text())["kept"] == 20


def test_clean_bad_input_exits_2(tmp_path, capsys):
    assert main(["clean", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    src = _raw(tmp_path, ['{"instruction": "q"}'])
    assert main(["clean", str(src), "-o", str(tmp_path / "o.jsonl"), "--on-error", "fail"]) == 2
    assert "raw.jsonl:22: missing field 'output'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    assert (
        main(
            [
                "clean",
                str(src),
                "-o",
                str(tmp_path / "o.jsonl"),
                "--eval-data",
                str(src),
                "--eval-share",
                "0.1",
            ]
        )
        == 2
    )
    assert "eval_share" in capsys.readouterr().err


def test_clean_token_limits(tmp_path, capsys):
    from tests.tiny import make_tokenizer

    tok_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tok_dir)
    src = _raw(tmp_path)
    out = str(tmp_path / "o.jsonl")
    assert (
        main(
            [
                "clean",
                str(src),
                "-o",
                out,
                "--tokenizer",
                str(tok_dir),
                "--max-tokens",
                "5",
                "--json",
            ]
        )
        == 2
    )
    assert "no training records left after cleaning (too_long 21)" in capsys.readouterr().err
    assert (
        main(
            [
                "clean",
                str(src),
                "-o",
                out,
                "--tokenizer",
                str(tok_dir),
                "--max-tokens",
                "500",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["too_long"] == 0
    assert main(["clean", str(src), "-o", out, "--max-tokens", "5"]) == 2
    assert "--max-tokens need --tokenizer" in capsys.readouterr().err
    assert (
        main(
            [
                "clean",
                str(src),
                "-o",
                out,
                "--tokenizer",
                str(tmp_path / "nope"),
                "--max-tokens",
                "5",
            ]
        )
        == 2
    )
