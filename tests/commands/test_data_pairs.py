"""`tunesmith data pairs` end to end on a tiny Llama: SFT run -> on-policy pairs -> DPO (real CLI)."""

from __future__ import annotations

import json

import pytest

from tunesmith.atomic import write_jsonl
from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@pytest.fixture(scope="module")
def sft_run(tiny_llama_dir, small_demo_data, tmp_path_factory):
    train, evals = small_demo_data
    out = tmp_path_factory.mktemp("sft") / "run"
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--output", str(out), "--data", str(train),
            "--eval-data", str(evals), "--max-steps", "2", "--batch-size", "4", "--eval-limit", "2",
            "--max-new-tokens", "4", "--skip-base-eval", "--lr", "5e-3",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def _pairs(run, out, *extra):
    return main(
        ["data", "pairs", str(run), "--out", str(out), "--samples", "2", "--max-new-tokens", "6"]
        + list(extra)
    )


def test_pairs_from_the_demo_split_train_dpo(sft_run, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert _pairs(sft_run, out, "--n-train", "8", "--n-eval", "4", "--seed", "1") == 0
    printed = capsys.readouterr().out
    assert "pairs.jsonl" in printed and "all right" in printed
    train = [json.loads(r) for r in (out / "pairs.jsonl").read_text().splitlines()]
    evals = [json.loads(r) for r in (out / "pairs_eval.jsonl").read_text().splitlines()]
    report = json.loads((out / "pairs_report.json").read_text())
    assert report["train"]["prompts"] == 8 and report["eval"]["prompts"] == 4
    assert report["train"]["samples"] == 16 and report["seed"] == 1
    # The 2-step SFT model writes no valid SQL: every prompt has mistakes, and those that
    # are usable completions (this model also emits control characters) give pairs.
    for split, pairs in (("train", train), ("eval", evals)):
        s = report[split]
        assert s["right_share"] == 0 and s["prompts_all_right"] == 0
        assert len(pairs) == s["pairs"] == s["prompts"] - s["prompts_without_usable_mistake"]
    assert len(train) >= 4 and len(evals) >= 1
    for pair in train + evals:
        assert pair["meta"]["task"] == "clinic-sql"
        assert pair["rejected"][0]["content"] != pair["chosen"][0]["content"]
    train_q = {p["prompt"][-1]["content"] for p in train}
    assert not train_q & {p["prompt"][-1]["content"] for p in evals}
    # The same seed gives the same pairs.
    again = tmp_path / "again"
    assert _pairs(sft_run, again, "--n-train", "8", "--n-eval", "4", "--seed", "1") == 0
    assert (again / "pairs.jsonl").read_text() == (out / "pairs.jsonl").read_text()
    # The pair files are what `train --objective dpo --data --eval-data` takes.
    dpo = tmp_path / "dpo"
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--output", str(dpo), "--objective", "dpo",
            "--init-from", str(sft_run), "--data", str(out / "pairs.jsonl"),
            "--eval-data", str(out / "pairs_eval.jsonl"), "--max-steps", "2", "--batch-size", "4",
            "--eval-limit", "2", "--max-new-tokens", "4", "--lr", "5e-3",
        ]
    )  # fmt: skip
    assert code == 0
    clean = json.loads((dpo / "data" / "clean_report.json").read_text())
    assert clean["kept"] == len(train)
    assert (
        "preference_accuracy" in json.loads((dpo / "eval.json").read_text())["metrics"]["adapted"]
    )


def test_pairs_from_files(sft_run, small_demo_data, tmp_path):
    _, evals = small_demo_data
    out = tmp_path / "pairs"
    assert _pairs(sft_run, out, "--eval-data", str(evals), "--n-eval", "3") == 0
    assert not (out / "pairs.jsonl").exists()
    report = json.loads((out / "pairs_report.json").read_text())
    assert report["eval"]["prompts"] == 3 and "train" not in report
    assert len((out / "pairs_eval.jsonl").read_text().splitlines()) == report["eval"]["pairs"]


def test_clear_errors(sft_run, tmp_path, capsys):
    assert _pairs(tmp_path / "missing", tmp_path / "o") == 2
    assert "no such run directory" in capsys.readouterr().err
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    assert _pairs(sft_run, tmp_path / "o", "--data", str(prompts)) == 2
    assert "reference answer" in capsys.readouterr().err
    assert _pairs(sft_run, tmp_path / "o", "--top-p", "0") == 2
    assert "top_p" in capsys.readouterr().err
