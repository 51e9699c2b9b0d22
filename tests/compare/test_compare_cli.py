"""The real `tunesmith compare` CLI end to end on a tiny Llama (no mocks).

One comparison of freeze, lora and full on a small slice of the clinic demo is shared by the
tests of this module; freeze asks for more top blocks than the 2-layer model has, so it fails
as a method can fail on a user's model, and the others must carry on.
"""

import contextlib
import io
import json
import math

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.methods import get_method, method_names

pytestmark = pytest.mark.xdist_group("compare-e2e")
# the default recipe's targets on a Llama
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ROW_KEYS = {
    "method", "lr", "trainable_params", "total_params", "trainable_share", "execution_accuracy",
    "exact_match", "eval_loss", "eval_perplexity", "general_perplexity", "forgetting",
    "peak_mem_bytes", "train_time_s",
    "tokens_per_s", "latency_ms", "latency_vs_base", "run_dir", "error",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from tunesmith.demo.dataset import write_demo_files

    return write_demo_files(tmp_path_factory.mktemp("demo"), seed=0, n_train=96, n_eval=16)


@pytest.fixture(scope="module")
def compared(tiny_llama_dir, demo_files, tmp_path_factory):
    """``(output dir, parsed --json stdout)`` of one three-method comparison."""
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    raw, evals = demo_files
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                "compare", "--methods", "freeze,lora,full", "--model", str(tiny_llama_dir),
                "--data", str(raw), "--eval-data", str(evals), "--output", str(out),
                "--max-steps", "3", "--batch-size", "4", "--eval-limit", "4",
                "--max-new-tokens", "6", "--logging-steps", "1", "--freeze-top-k", "5",
                "--latency-runs", "2", "--json",
            ]
        )  # fmt: skip
    assert code == 0
    return out, json.loads(stdout.getvalue())


def _rows(compared):
    out, _ = compared
    return {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}


def test_compare_json_rows_keys_and_stdout(compared):
    out, printed = compared
    saved = json.loads((out / "compare.json").read_text())
    assert printed == saved  # --json prints exactly the file
    assert [r["method"] for r in saved["rows"]] == ["base", "freeze", "lora", "full"]
    for row in saved["rows"]:
        assert set(row) == ROW_KEYS
    s = saved["settings"]
    assert s["methods"] == ["freeze", "lora", "full"]
    assert (s["task"], s["task_metric"], s["eval_n"]) == ("clinic-sql", "execution_accuracy", 4)
    assert (s["max_steps"], s["batch_size"], s["seed"], s["lr"]) == (3, 4, 42, "per-method default")


def test_failed_method_gets_an_error_row_and_the_others_finish(compared):
    rows = _rows(compared)
    assert "freeze_top_k" in rows["freeze"]["error"]
    assert rows["freeze"]["trainable_params"] is None and rows["freeze"]["latency_ms"] is None
    for m in ("lora", "full"):
        assert rows[m]["error"] is None
        assert 0.0 <= rows[m]["execution_accuracy"] <= 1.0
        assert rows[m]["latency_ms"] > 0 and rows[m]["latency_vs_base"] > 0
        assert rows[m]["train_time_s"] > 0


def test_param_counts_and_shares(compared, tiny_llama_dir):
    """LoRA's count equals peft's own; full trains every base weight (share exactly 1)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    rows = _rows(compared)
    base_total = sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters()
    )
    ref = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, lora_alpha=32, target_modules=ALL_LINEAR),  # the default recipe
    )
    lora_ref = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert rows["lora"]["trainable_params"] == lora_ref
    assert rows["lora"]["trainable_share"] == pytest.approx(lora_ref / base_total)
    assert rows["full"]["trainable_params"] == base_total == rows["base"]["total_params"]
    assert rows["full"]["trainable_share"] == 1.0
    assert rows["full"]["trainable_share"] > rows["lora"]["trainable_share"] > 0
    assert rows["base"]["trainable_params"] == 0 and rows["base"]["latency_ms"] > 0
    assert rows["base"]["latency_vs_base"] == 1.0


def test_every_method_saw_the_same_examples_with_its_own_lr(compared):
    out, _ = compared
    rows = _rows(compared)
    shared = out / "lora" / "data" / "train.jsonl"  # freeze failed first: lora cleaned the data
    for m in ("lora", "full"):
        cfg = yaml.safe_load((out / m / "config.yaml").read_text())
        assert cfg["lr"] == rows[m]["lr"] == get_method(m).default_lr
        if m != "lora":
            assert cfg["data"] == [str(shared)]
            assert cfg["eval-data"] == str(out / "lora" / "data" / "train.eval.jsonl")
            assert cfg["skip-base-eval"] is True  # the base was scored once, by lora's run
    prompts = [
        [s["prompt"] for s in json.loads((out / m / "eval.json").read_text())["samples"]]
        for m in ("lora", "full")
    ]
    assert prompts[0] == prompts[1] and len(prompts[0]) == 4


def test_rows_repeat_what_each_run_measured(compared):
    out, _ = compared
    rows = _rows(compared)
    lora_eval = json.loads((out / "lora" / "eval.json").read_text())
    assert rows["base"]["execution_accuracy"] == lora_eval["metrics"]["base"]["execution_accuracy"]
    for m in ("lora", "full"):
        metrics = [json.loads(x) for x in (out / m / "metrics.jsonl").read_text().splitlines()]
        eval_loss = [r["eval_loss"] for r in metrics if "eval_loss" in r][-1]
        assert rows[m]["eval_loss"] == eval_loss
        assert rows[m]["eval_perplexity"] == pytest.approx(math.exp(eval_loss), rel=1e-12)
        assert rows[m]["peak_mem_bytes"] == max(r["peak_mem_bytes"] for r in metrics if "loss" in r)
        ev = json.loads((out / m / "eval.json").read_text())
        assert rows[m]["execution_accuracy"] == ev["metrics"]["adapted"]["execution_accuracy"]


def test_plot_is_a_png_and_the_report_shows_the_comparison(compared):
    from tunesmith.report import write_report

    out, _ = compared
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    html = write_report(out).read_text(encoding="utf-8")
    assert "Method comparison" in html and "<td>lora</td>" in html


def test_unknown_method_exits_2_before_training(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["compare", "--methods", "lora,loraa", "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "loraa" in err and all(m in err for m in method_names())
    assert not out.exists()


def test_single_method_flag_is_refused(tmp_path, capsys):
    code = main(
        ["compare", "--methods", "lora", "--method", "full", "--output", str(tmp_path / "x")]
    )
    assert code == 2 and "--methods" in capsys.readouterr().err


def test_forgetting_is_each_methods_general_perplexity_over_the_bases(compared):
    out, _ = compared
    rows = _rows(compared)
    base_ppl = rows["base"]["general_perplexity"]
    assert base_ppl > 1 and rows["base"]["forgetting"] == 0.0
    for m in ("lora", "full"):
        ev = json.loads((out / m / "eval.json").read_text())["metrics"]
        # Every run measured the same base, and its adapted side against it.
        assert ev["adapted"]["general_perplexity"] == rows[m]["general_perplexity"]
        assert rows[m]["forgetting"] == pytest.approx(rows[m]["general_perplexity"] / base_ppl - 1)
        assert ev["adapted"]["answer_perplexity"] > 1
