"""`tunesmith compare --objective dpo` end to end on a tiny Llama and preference pairs (no mocks).

One comparison of lora, prompt, houlsby and full is shared by the tests of this module: every
method trains with DPO (LoRA and houlsby against their adapter switched off, full against a
frozen copy), prompt is refused by the objective and gets an error row while the others go on,
and the rows, the table and ``compare.json`` carry preference accuracy and reward margin.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
import yaml

from tunesmith.atomic import write_jsonl
from tunesmith.cli import main
from tunesmith.demo.pairs import demo_pairs

pytestmark = pytest.mark.xdist_group("compare-e2e")

TRAINED = ("lora", "houlsby", "full")


@pytest.fixture(scope="module")
def compared(tiny_llama_dir, tmp_path_factory):
    """``(output dir, the table printed on stdout)`` of one DPO comparison."""
    d = tmp_path_factory.mktemp("cmp-dpo")
    train, evals = demo_pairs(seed=0, n_train=24, n_eval=6)
    train_file, eval_file = (
        write_jsonl(d / "train.jsonl", train),
        write_jsonl(d / "eval.jsonl", evals),
    )
    out = d / "out"
    stdout = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"  # the whole table on one line per row
    try:
        with contextlib.redirect_stdout(stdout):
            code = main(
                [
                    "compare", "--objective", "dpo", "--methods", "lora,prompt,houlsby,full",
                    "--model", str(tiny_llama_dir), "--data", str(train_file),
                    "--eval-data", str(eval_file), "--output", str(out), "--max-steps", "2",
                    "--batch-size", "4", "--eval-limit", "4", "--max-new-tokens", "4",
                    "--lr", "5e-3", "--logging-steps", "1", "--no-latency",
                ]
            )  # fmt: skip
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    assert code == 0
    return out, stdout.getvalue()


def _saved(out):
    return json.loads((out / "compare.json").read_text())


def test_every_method_trains_with_the_objective_and_reports_preference_metrics(compared):
    out, _ = compared
    saved = _saved(out)
    assert saved["settings"]["objective"] == "dpo"
    rows = {r["method"]: r for r in saved["rows"]}
    assert list(rows) == ["base", "lora", "prompt", "houlsby", "full"]
    for m in TRAINED:
        assert rows[m]["error"] is None
        assert yaml.safe_load((out / m / "config.yaml").read_text())["objective"] == "dpo"
        ev = json.loads((out / m / "eval.json").read_text())
        assert ev["objective"]["name"] == "dpo"
        adapted = ev["metrics"]["adapted"]
        # compare reports exactly what each run measured
        assert rows[m]["preference_accuracy"] == adapted["preference_accuracy"]
        assert rows[m]["reward_margin"] == adapted["reward_margin"]
        assert 0 <= rows[m]["preference_accuracy"] <= 1
        metrics = [json.loads(x) for x in (out / m / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in metrics if "loss" in r] == [1, 2]
    # The reference is the base itself: its own margin is 0 by definition.
    base_eval = json.loads((out / "lora" / "eval.json").read_text())["metrics"]["base"]
    assert rows["base"]["preference_accuracy"] == base_eval["preference_accuracy"]
    assert rows["base"]["reward_margin"] == 0


def test_a_refused_method_gets_an_error_row_and_the_others_finish(compared):
    out, _ = compared
    rows = {r["method"]: r for r in _saved(out)["rows"]}
    error = rows["prompt"]["error"]
    assert "--objective dpo" in error and "--method prompt" in error
    assert "preference_accuracy" not in rows["prompt"]  # nothing measured, nothing claimed
    assert not (out / "prompt" / "adapter").exists()
    assert all(rows[m]["error"] is None for m in TRAINED)


def test_the_table_shows_the_preference_columns(compared):
    out, table = compared
    rows = {r["method"]: r for r in _saved(out)["rows"]}
    assert "pref acc" in table and "margin" in table
    lines = {line.split()[0]: line for line in table.splitlines() if line.split()}
    for m in ("base", *TRAINED):
        assert f"{rows[m]['preference_accuracy']:.3f}" in lines[m]
    assert "prompt failed" in table
