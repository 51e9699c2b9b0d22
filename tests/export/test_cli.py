"""The merge and export commands: exit codes, messages, JSON, nothing left behind on errors."""

from __future__ import annotations

import json
import sys

import pytest

from tests.export.adapters import make_adapter
from tests.tiny import CHATML_TEMPLATE
from tunesmith.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lora_adapter(tiny_qwen2_dir, tmp_path):
    return make_adapter(tiny_qwen2_dir, tmp_path / "adapter", "lora")


def test_export_safetensors_json(lora_adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    code, stdout, _ = _run(
        capsys, "export", str(lora_adapter), "--format", "safetensors", "-o", str(out), "--json"
    )
    assert code == 0
    payload = json.loads(stdout)
    assert payload["format"] == "safetensors" and payload["dtype"] == "fp32"
    assert payload["verification"]["passed"] is True
    assert payload["verification"]["max_abs_diff"] < 1e-5
    assert (out / "config.json").is_file()


def test_merge_prints_a_table(lora_adapter, tmp_path, capsys):
    code, stdout, _ = _run(
        capsys, "merge", str(lora_adapter), "-o", str(tmp_path / "m"), "--dtype", "bf16"
    )
    assert code == 0
    assert "max |Δlogit|" in stdout and "passed" in stdout and "bf16" in stdout


def test_export_peft_of_an_unmergeable_method(tiny_llama_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "prefix", "prefix")
    out = tmp_path / "exported"
    code, stdout, _ = _run(
        capsys, "export", str(adapter), "--format", "peft", "-o", str(out), "--json"
    )
    assert code == 0
    payload = json.loads(stdout)
    assert payload["verification"]["passed"] and payload["verification"]["chat_template_preserved"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(
        payload["files"]
    )
    assert (out / "chat_template.jinja").read_text() == CHATML_TEMPLATE


@pytest.mark.parametrize("command", ["merge", "gguf", "safetensors"])
def test_unmergeable_method_is_refused(command, tiny_llama_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "prefix", "prefix")
    out = tmp_path / ("out.gguf" if command == "gguf" else "out")
    argv = (
        ["merge", str(adapter)]
        if command == "merge"
        else ["export", str(adapter), "--format", command]
    )
    code, _, err = _run(capsys, *argv, "-o", str(out))
    assert code == 2
    assert "cannot be merged" in err and "--format peft" in err
    assert not out.exists()


def test_bad_inputs_exit_2_and_leave_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "merge", str(tmp_path / "missing"), "-o", str(out))
    assert code == 2 and "no such run or adapter directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(
        capsys, "export", str(tmp_path / "empty"), "--format", "peft", "-o", str(out)
    )
    assert code == 2 and "adapter_config.json" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_gguf_output_must_be_a_gguf_file(lora_adapter, tmp_path, capsys):
    code, _, err = _run(
        capsys, "export", str(lora_adapter), "--format", "gguf", "-o", str(tmp_path / "x.bin")
    )
    assert code == 2 and ".gguf" in err


def test_verify_on_prompts_from_a_data_file(lora_adapter, tmp_path, capsys):
    data = tmp_path / "eval.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer with SQL."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": "SELECT 1;"},
            ]
        }
        for q in (
            "How many patients live in Lyon?",
            "Which doctor has the most visits?",
            "List drugs.",
        )
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "adapter-copy"
    argv = ["export", str(lora_adapter), "--format", "peft", "-o", str(out), "--prompts", str(data)]
    code, stdout, _ = _run(capsys, *argv, "--max-prompts", "2", "--max-new-tokens", "4", "--json")
    assert code == 0
    assert json.loads(stdout)["verification"]["n_prompts"] == 2


def test_refuses_to_replace_a_foreign_directory(lora_adapter, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = _run(capsys, "merge", str(lora_adapter), "-o", str(out))
    assert code == 2 and "not an earlier merge" in err
    assert (out / "notes.txt").read_text() == "keep me"
    code, _, err = _run(capsys, "merge", str(lora_adapter), "-o", str(tmp_path))
    assert code == 2 and "overwrite the input" in err


def test_k_quant_without_llamacpp_says_what_to_install(lora_adapter, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    out = tmp_path / "m.gguf"
    code, _, err = _run(
        capsys, "export", str(lora_adapter), "--format", "gguf", "--quant", "q4_k_m", "-o", str(out)
    )
    assert code == 2
    assert "pip install 'tunesmith[llamacpp]'" in err and "--quant q4_k_m" in err
    assert not out.exists()


def test_gguf_with_ollama_writes_modelfile_and_export_record(
    lora_adapter, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the transformers check alone
    monkeypatch.setattr("tunesmith.export.llamacpp.available", lambda: False)
    out = tmp_path / "out" / "model.q8_0.gguf"
    argv = ["export", str(lora_adapter), "--format", "gguf", "--quant", "q8_0", "-o", str(out)]
    code, stdout, _ = _run(capsys, *argv, "--ollama", "--json")
    assert code == 0
    payload = json.loads(stdout)
    assert payload["quant"] == "q8_0" and payload["verification"]["passed"]
    assert payload["llamacpp"] is None and "tunesmith[llamacpp]" in payload["note"]
    modelfile = (out.parent / "Modelfile").read_text()
    assert "FROM ./model.q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    record = json.loads((out.parent / "export.json").read_text())
    assert record["model.q8_0.gguf"]["quant"] == "q8_0"
    assert record["model.q8_0.gguf"]["bytes"] == out.stat().st_size


def test_export_help_lists_quants_and_architectures(capsys):
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "q4_k_m" in out and "llama, qwen2" in out
