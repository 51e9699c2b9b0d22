"""`tunesmith plan`: exit codes, JSON on stdout, the table."""

from __future__ import annotations

import json

from tunesmith.cli import main


def test_plan_json_default_model(capsys):
    assert main(["plan", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "fits" and out["budget_bytes"] == 24 * 1024**3


def test_plan_exits_zero_when_it_does_not_fit(capsys):
    rc = main(
        ["plan", "--model", "llama-2-13b", "--gpu", "24GB", "--batch-size", "4",
         "--seq-len", "2048", "--gradient-checkpointing", "off", "--json"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verdict"] == "does-not-fit" and out["recommendation"]["fits"]


def test_plan_table_names_verdict_and_recommendation(capsys):
    assert main(["plan", "--model", "llama-2-13b", "--gpu", "rtx4090"]) == 0
    out = capsys.readouterr().out
    assert "weights" in out and "does-not-fit" in out and "recommendation: qlora" in out


def test_bad_input_exits_2_with_one_line(capsys):
    assert main(["plan", "--gpu", "rtx9999"]) == 2
    err = capsys.readouterr().err
    assert "'gpu'" in err and "Traceback" not in err
    assert main(["plan", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["plan", "--method", "magic"]) == 2
