"""The real `tunesmith train` / `eval` / `chat` CLI end to end on a tiny Llama (no mocks)."""

import json

import pytest
import torch

from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@pytest.fixture(scope="module")
def demo_run(tiny_llama_dir, tmp_path_factory):
    """One short LoRA run on the demo data, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("runs") / "demo"
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--output", str(out), "--max-steps", "16",
            "--batch-size", "8", "--lr", "5e-3", "--target", "all-linear", "--logging-steps", "4",
            "--eval-limit", "12", "--max-new-tokens", "8", "--lr-scheduler", "constant",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_run_directory_layout(demo_run):
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.html", "data/clean_report.json",
                 "data/train.jsonl", "data/train.eval.jsonl", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):  # fmt: skip
        assert (demo_run / name).is_file(), name
    report = json.loads((demo_run / "data/clean_report.json").read_text())
    # The raw demo file carries planted duplicates and broken records; clean must find them.
    assert report["exact_duplicates"] > 0 and len(report["invalid"]) > 0


def test_loss_falls_in_metrics(demo_run):
    rows = [json.loads(r) for r in (demo_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [4, 8, 12, 16]
    assert train[-1]["loss"] < train[0]["loss"]
    assert {"grad_norm", "lr", "tokens_per_s", "peak_mem_bytes", "elapsed_s", "epoch"} <= set(
        train[0]
    )
    assert any("eval_loss" in r for r in rows)


def test_eval_json_has_base_and_adapted(demo_run):
    ev = json.loads((demo_run / "eval.json").read_text())
    assert ev["task"] == "clinic-sql" and ev["n"] == 12
    assert set(ev["metrics"]) == {"base", "adapted"}
    assert 0.0 <= ev["metrics"]["adapted"]["execution_accuracy"] <= 1.0


def test_adapter_reloads_to_identical_logits_and_base_is_untouched(demo_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.models.adapted import load_adapted

    loaded = load_adapted(demo_run)
    model, tok = loaded.model, loaded.tokenizer
    assert loaded.artifact.kind == "adapter"
    ids = tok("SELECT name FROM patients", return_tensors="pt")["input_ids"]
    # Stock peft on a stock transformers base gives the same logits.
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=model.dtype)
    stock = PeftModel.from_pretrained(base, str(demo_run / "adapter")).eval()
    with torch.no_grad():
        a, b = model(ids).logits, stock(ids).logits
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        # The adapter changed the model (it is not a no-op) ...
        with stock.disable_adapter():
            plain = stock(ids).logits
        assert not torch.allclose(plain, b)
    # ... and the saved adapter holds only adapter tensors.
    from safetensors.torch import load_file

    keys = load_file(str(demo_run / "adapter/adapter_model.safetensors")).keys()
    assert keys and all("lora_" in k for k in keys)


def test_eval_command_writes_eval_json(demo_run, tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(
        [
            "eval",
            str(demo_run),
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
            "--no-forgetting",
            "-o",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    ev = json.loads(out.read_text())
    assert ev["n"] == 4 and "answer_perplexity" in ev["metrics"]["adapted"]


def test_chat_one_shot(demo_run, capsys):
    code = main(
        ["chat", str(demo_run), "--prompt", "How many doctors?", "--max-new-tokens", "5", "--json"]
    )
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["prompt"] == "How many doctors?" and isinstance(answer["answer"], str)


def test_resume_of_finished_run_is_refused_for_new_output(demo_run, capsys):
    code = main(["train", "--model", "x", "--output", str(demo_run)])
    assert code == 2


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--data", "missing.jsonl"], "data file not found"),
        (["--model", "./no/such/model"], "model not found"),
        (["--method", "lorax"], "lorax"),
        (["--lr", "-1"], "lr"),
        (["--rank", "0"], "rank"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(argv, words, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--output", str(out)]
    if "--model" not in argv:
        args += ["--model", str(tiny_llama_dir)]
    code = main(args + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and "Traceback" not in err
    assert not out.exists()


def test_malformed_jsonl_line_fails_with_file_and_line(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    good = {"instruction": "Say hi", "output": "hi"}
    data.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_llama_dir),
            "--data",
            str(data),
            "--output",
            str(out),
            "--on-error",
            "fail",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "d.jsonl:2" in err
    assert not out.exists()


def test_threads_flag_sets_torch_threads(tiny_llama_dir, small_demo_data, tmp_path):
    before = torch.get_num_threads()
    train, evals = small_demo_data
    try:
        code = main(
            ["train", "--model", str(tiny_llama_dir), "--data", str(train), "--eval-data", str(evals),
             "--output", str(tmp_path / "r"), "--max-steps", "1", "--skip-base-eval", "--eval-limit", "1",
             "--max-new-tokens", "2", "--threads", "1"]
        )  # fmt: skip
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_eval_and_chat_generate_on_the_cores_other_processes_leave(demo_run, tmp_path, monkeypatch):
    from tunesmith import core_watch

    looks: list[str] = []

    def counting_watch():
        def clock() -> float:
            looks.append(command)
            return float(len(looks))

        return core_watch.CoreWatch(2, 2, clock=clock, busy_s=lambda: 0.0, set_threads=print)

    monkeypatch.setattr(core_watch, "watch_cores", counting_watch)
    command = "chat"
    argv = ["chat", str(demo_run), "--prompt", "How many doctors?", "--max-new-tokens", "5"]
    assert main(argv) == 0
    command = "eval"
    argv = ["eval", str(demo_run), "--limit", "2", "--max-new-tokens", "3", "--no-forgetting"]
    assert main([*argv, "-o", str(tmp_path / "e.json")]) == 0
    assert looks.count("chat") >= 2 and looks.count("eval") >= 2  # each at its forward passes
