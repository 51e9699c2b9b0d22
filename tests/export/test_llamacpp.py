"""GGUF exports checked in llama.cpp itself (llama-cpp-python, the ``[llamacpp]`` extra).

``make test`` installs the extra and sets ``TUNESMITH_REQUIRE_LLAMACPP=1``, so there a missing
llama.cpp fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os

import pytest
from gguf import GGUFReader

from tests.export.adapters import make_adapter
from tests.export.trained import QA, SYSTEM, build_trained_run
from tunesmith.cli import main

if os.environ.get("TUNESMITH_REQUIRE_LLAMACPP") != "1":
    pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is not installed")

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """arch -> a LoRA run directory on a hidden-256 model that answers and stops (built once)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = build_trained_run(tmp_path_factory.mktemp(f"trained-{arch}"), arch)
        return cache[arch]

    return get


def _matrix_types(path):
    return {t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) == 2}


@pytest.mark.parametrize(
    ("arch", "quant", "expected_types"),
    [
        ("llama", "q8_0", {"Q8_0"}),
        ("qwen2", "f16", {"F16"}),
        # Q4_K_M is llama.cpp's mix: Q4_K, with Q6_K for the output and some attn_v/ffn_down.
        ("llama", "q4_k_m", {"Q4_K", "Q6_K"}),
        ("qwen2", "q6_k", {"Q6_K"}),
    ],
)
def test_answers_and_stops_in_llamacpp(arch, quant, expected_types, trained, tmp_path):
    from tunesmith.export import export

    run = trained(arch)
    out = tmp_path / f"model.{quant}.gguf"
    result = export(run, "gguf", out, quant=quant)
    rt = result.detail["llamacpp"]
    assert rt["passed"], rt["failures"]
    assert rt["n_prompts"] == len(QA) and rt["metric"] == "exact_match"
    assert rt["stopped_at_end_of_turn"] == rt["adapted_stopped"] == len(QA)
    assert rt["chat_template_preserved"] and rt["prompt_token_agreement"] == 1.0
    if rt["check"] == "answers":
        assert rt["same_answers"] >= 0.95
    assert rt["metric_adapted"] - rt["metric_gguf"] <= 0.03
    assert _matrix_types(out) == expected_types
    record = json.loads((tmp_path / "export.json").read_text())[out.name]
    assert record["llamacpp"]["passed"] and record["quant"] == quant


def test_cli_k_quant_with_ollama(trained, tmp_path, capsys):
    out = tmp_path / "deploy" / "model.q5_k_m.gguf"
    argv = ["export", str(trained("llama")), "--format", "gguf", "--quant", "q5_k_m"]
    code = main([*argv, "-o", str(out), "--ollama", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["writer"] == "llama.cpp" and payload["llamacpp"]["passed"]
    assert payload["verification"]["passed"]  # transformers' reader reads the K-quants too
    assert "FROM ./model.q5_k_m.gguf" in (out.parent / "Modelfile").read_text()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_generation_ends_at_the_end_of_turn_token(trained, tmp_path):
    """No runaway: llama.cpp, with the template and ids from the file, stops at <|im_end|>."""
    from transformers import AutoTokenizer

    from tunesmith.export import export
    from tunesmith.export.llamacpp import LlamaCppModel

    run = trained("llama")
    out = tmp_path / "model.gguf"
    export(run, "gguf", out, quant="q4_k_m", verify=False)
    tok = AutoTokenizer.from_pretrained(run.parent / "base")
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    llm = LlamaCppModel(out)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == end_of_turn
        for question, answer in QA:
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ]
            text = tok.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
            got = llm.greedy(llm.tokenize(text), max_new_tokens=64)
            assert got.stop_id == end_of_turn, question
            assert len(got.ids) < 64 and llm.detokenize(got.ids).strip() == answer
    finally:
        llm.close()


def test_diverging_answers_fail_and_name_the_prompts(trained, tmp_path):
    """A reference the file cannot match: the check fails, listing exactly those prompts."""
    import torch

    from tunesmith.export import export
    from tunesmith.export.runtime_check import (
        RuntimeCheckFailed,
        adapted_answers,
        check_in_llamacpp,
        held_out_conversations,
    )
    from tunesmith.models.adapted import load_adapted
    from tunesmith.models.artifact import locate

    run = trained("qwen2")
    out = tmp_path / "model.gguf"
    export(run, "gguf", out, quant="q8_0", verify=False)
    art = locate(run)
    loaded = load_adapted(art, dtype=torch.float32)
    ref = adapted_answers(loaded.model, loaded.tokenizer, held_out_conversations(art))
    for i in (2, 5):  # the adapted model "said" something else on two prompts
        ref.generations[i] = type(ref.generations[i])("SELECT 0;", 4, True)
    report = check_in_llamacpp(out, ref, "q8_0")
    assert not report.passed and [d["index"] for d in report.diverged] == [2, 5]
    assert "same greedy answers on 75.0%" in report.failures[0]
    message = str(RuntimeCheckFailed(report))
    assert QA[2][0][:40] in message and QA[5][0][:20] in message


def test_cli_failed_check_exits_1_names_prompts_and_publishes_nothing(
    trained, tmp_path, capsys, monkeypatch
):
    from tunesmith.export import gguf_export, runtime_check

    real = runtime_check.check_in_llamacpp

    def against_another_answer(path, ref, quant):  # the adapted model "said" otherwise on #3
        ref.generations[3] = type(ref.generations[3])("SELECT 0;", 4, True)
        return real(path, ref, quant)

    monkeypatch.setattr(gguf_export, "check_in_llamacpp", against_another_answer)
    out = tmp_path / "model.gguf"
    argv = ["export", str(trained("llama")), "--format", "gguf", "--quant", "q8_0"]
    code = main([*argv, "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Diverged prompts: #3" in captured.err and QA[3][0] in captured.err
    assert "FAILED" in captured.out and "same greedy answer" in captured.out
    assert not out.exists() and not (tmp_path / "export.json").exists()


def test_k_quant_falls_back_on_rows_shorter_than_256(tiny_llama_dir, tmp_path):
    """Hidden 64: no row fills a 256-value K-quant block, so llama.cpp stores the matrices in
    its fallback types (q5_0/q5_1/q8_0 for q4_k_m); the file still loads and stops in llama.cpp."""
    from tunesmith.export import export

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    out = tmp_path / "model.gguf"
    result = export(adapter, "gguf", out, quant="q4_k_m")
    assert result.detail["llamacpp"]["passed"]
    types = _matrix_types(out)
    assert "Q4_K" not in types and types <= {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q6_K"}


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~4 min of CPU; more wall time where the cores are shared
def test_embedded_model_end_to_end(tmp_path):
    """SmolLM2-135M-Instruct + a small LoRA, clinic questions: f16 GGUF answers and stops in
    llama.cpp as the adapted model does (execution accuracy scored on both)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from tunesmith.atomic import write_jsonl
    from tunesmith.demo.dataset import demo_splits
    from tunesmith.export import export
    from tunesmith.models import load_model_and_tokenizer

    model, _, _ = load_model_and_tokenizer("embedded", dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM)
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # small enough to keep the model fluent, large enough to merge
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    peft_model.save_pretrained(tmp_path / "adapter")
    _, evals = demo_splits(seed=0, n_train=8, n_eval=6)
    held_out = write_jsonl(tmp_path / "eval.jsonl", (c.to_json() for c in evals))
    out = tmp_path / "smollm2.f16.gguf"
    result = export(tmp_path / "adapter", "gguf", out, quant="f16", held_out=held_out)
    rt = result.detail["llamacpp"]
    assert rt["passed"], rt["failures"]
    assert rt["metric"] == "execution_accuracy" and rt["n_prompts"] == 6
    assert rt["stopped_at_end_of_turn"] >= rt["adapted_stopped"] > 0
    assert rt["chat_template_preserved"] and rt["prompt_token_agreement"] == 1.0
