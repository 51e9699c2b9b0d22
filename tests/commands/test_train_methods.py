"""`tunesmith train --method M` runs end to end for every registered method (short runs)."""

import json

import pytest

from tunesmith.cli import main
from tunesmith.methods import method_names

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_and_saves(method, tiny_llama_dir, small_demo_data, tmp_path):
    out = tmp_path / method
    train, evals = small_demo_data
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--method", method, "--output", str(out),
            "--data", str(train), "--eval-data", str(evals),
            "--max-steps", "2", "--batch-size", "4", "--eval-limit", "2", "--max-new-tokens", "4",
            "--skip-base-eval", "--num-virtual-tokens", "4", "--bottleneck", "8", "--freeze-top-k", "1",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 2 and rows[0]["loss"] > 0
    saved = out / ("model" if method in ("full", "freeze") else "adapter")
    assert (
        saved / ("config.json" if method in ("full", "freeze") else "adapter_config.json")
    ).is_file()
    assert json.loads((out / "eval.json").read_text())["metrics"]["adapted"]
