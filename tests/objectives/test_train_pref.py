"""`tunesmith train --objective dpo|orpo|simpo|kto` end to end on a tiny Llama (real CLI, no mocks)."""

from __future__ import annotations

import json

import pytest

from tunesmith.atomic import write_jsonl
from tunesmith.cli import main
from tunesmith.demo.pairs import demo_pairs

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    train, evals = demo_pairs(seed=0, n_train=24, n_eval=6)
    d = tmp_path_factory.mktemp("pairs")
    kto = [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
        for r in train
        for side in ("chosen", "rejected")
    ]
    return (
        write_jsonl(d / "train.jsonl", train),
        write_jsonl(d / "eval.jsonl", evals),
        write_jsonl(d / "kto.jsonl", kto),
    )


def _train(tiny_llama_dir, out, data, evals, *extra):
    return main(
        [
            "train", "--model", str(tiny_llama_dir), "--output", str(out), "--data", str(data),
            "--eval-data", str(evals), "--max-steps", "3", "--batch-size", "4", "--eval-limit", "4",
            "--max-new-tokens", "4", "--lr", "5e-3", "--logging-steps", "1", *extra,
        ]
    )  # fmt: skip


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
def test_pair_objectives_train_and_report_preference_metrics(
    objective, tiny_llama_dir, pair_files, tmp_path
):
    train, evals, _ = pair_files
    out = tmp_path / objective
    assert _train(tiny_llama_dir, out, train, evals, "--objective", objective) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    report = json.loads((out / "eval.json").read_text())
    for side in ("base", "adapted"):
        assert 0 <= report["metrics"][side]["preference_accuracy"] <= 1
    assert "exact_match" in report["metrics"]["adapted"] or report["metrics"]["adapted"]
    assert report["objective"]["name"] == objective
    if objective == "dpo":
        assert report["metrics"]["base"]["reward_margin"] == 0  # the base is the reference
        assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1: policy == reference
    clean = json.loads((out / "data" / "clean_report.json").read_text())
    assert clean["kept"] == 24 and clean["identical_sides"] == 0


def test_kto_trains_on_unpaired_examples(tiny_llama_dir, pair_files, tmp_path):
    _, evals, kto = pair_files
    assert _train(tiny_llama_dir, tmp_path / "kto", kto, evals, "--objective", "kto") == 0
    assert (tmp_path / "kto" / "adapter" / "adapter_config.json").is_file()


def test_refusals(tiny_llama_dir, pair_files, tmp_path, capsys):
    train, evals, _ = pair_files
    assert (
        _train(
            tiny_llama_dir, tmp_path / "p", train, evals, "--objective", "dpo", "--method", "prompt"
        )
        == 2
    )
    assert "virtual tokens" in capsys.readouterr().err
    assert _train(tiny_llama_dir, tmp_path / "k", train, evals, "--objective", "kto") == 2
    assert "unpaired" in capsys.readouterr().err


def test_sft_then_dpo_with_init_from(tiny_llama_dir, small_demo_data, pair_files, tmp_path):
    """SFT -> DPO is two commands; DPO continues the SFT adapter, whose log-probs are its reference."""
    sft_train, sft_eval = small_demo_data
    train, evals, _ = pair_files
    sft = tmp_path / "sft"
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--output", str(sft), "--data", str(sft_train),
            "--eval-data", str(sft_eval), "--max-steps", "3", "--batch-size", "4", "--eval-limit", "2",
            "--max-new-tokens", "4", "--skip-base-eval", "--lr", "5e-3",
            "--dropout", "0",  # the continued adapter keeps it: step 1's policy is then the reference exactly
        ]
    )  # fmt: skip
    assert code == 0
    dpo = tmp_path / "dpo"
    assert (
        _train(tiny_llama_dir, dpo, train, evals, "--objective", "dpo", "--init-from", str(sft))
        == 0
    )
    rows = [json.loads(r) for r in (dpo / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1: policy == SFT reference
    assert (dpo / "data" / "reference_logps_train.pt").is_file()
    report = json.loads((dpo / "eval.json").read_text())
    assert report["metrics"]["base"]["reward_margin"] == 0
    assert "reward_margin" in report["metrics"]["adapted"]
    # Another method than the SFT run's is refused before loading.
    assert (
        _train(
            tiny_llama_dir,
            tmp_path / "x",
            train,
            evals,
            "--objective",
            "dpo",
            "--method",
            "dora",
            "--init-from",
            str(sft),
        )
        == 2
    )
