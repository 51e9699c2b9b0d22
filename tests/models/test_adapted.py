"""The one loader of trained results: what each layout locates to and what it loads (no mocks)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.export.adapters import IDS, adapted_logits, make_adapter, make_run_dir
from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.errors import UserInputError
from tunesmith.models.adapted import load_adapted, load_base, load_merged
from tunesmith.models.artifact import BASE_INFO, locate


def _logits(model, ids=IDS):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def _base_logits(base_dir):
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval())


def test_lora_run_loads_like_stock_peft(tiny_llama_dir, tmp_path):
    run = make_run_dir(tiny_llama_dir, tmp_path / "run", "lora")
    art = locate(run)
    assert (art.kind, art.dir, art.run_dir, art.method) == ("adapter", run / "adapter", run, "lora")
    assert art.base_model == str(tiny_llama_dir) and art.mergeable and not art.quantized_base

    loaded = load_adapted(run, dtype=torch.float32)
    want = adapted_logits(tiny_llama_dir, run / "adapter", IDS)
    torch.testing.assert_close(_logits(loaded.model), want, rtol=0, atol=0)
    assert loaded.base_model == str(tiny_llama_dir) and loaded.artifact == art
    with loaded.model.disable_adapter():
        torch.testing.assert_close(_logits(loaded.model), _base_logits(tiny_llama_dir))
    # The adapter directory given directly still finds its run (and so its method).
    inner = locate(run / "adapter")
    assert inner.run_dir == run.resolve() and inner.method == "lora"


def test_base_record_beside_the_adapter_names_base_and_method(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/moved/away"  # e.g. a cache path on another machine
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / BASE_INFO).write_text(json.dumps({"model": str(tiny_llama_dir), "method": "qlora"}))
    art = locate(adapter)
    assert art.base_model == str(tiny_llama_dir) and art.method == "qlora" and art.quantized_base
    assert art.run_dir is None


@pytest.mark.parametrize(
    "method, mergeable", [("dora", True), ("rslora", True), ("ia3", True), ("prefix", False)]
)
def test_method_of_a_foreign_adapter_comes_from_its_peft_config(
    tiny_llama_dir, tmp_path, method, mergeable
):
    art = locate(make_adapter(tiny_llama_dir, tmp_path / "adapter", method))
    assert art.method == method and art.mergeable is mergeable and art.spec.name == method


def test_full_run_model_dir_loads_itself_and_its_base_apart(tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    trained = make_tiny_model(vocab_size=len(make_tokenizer()), seed=7)
    trained.save_pretrained(run / "model")
    make_tokenizer().save_pretrained(run / "model")
    (run / "model" / BASE_INFO).write_text(
        json.dumps({"model": str(tiny_llama_dir), "method": "full"})
    )
    (run / "config.yaml").write_text(f"model: {tiny_llama_dir}\nmethod: full\n")

    for given in (run, run / "model"):
        art = locate(given)
        assert (art.kind, art.dir, art.method, art.base_model) == (
            "model", run / "model", "full", str(tiny_llama_dir)
        )  # fmt: skip
    loaded = load_adapted(run, dtype=torch.float32)
    torch.testing.assert_close(_logits(loaded.model), _logits(trained), rtol=0, atol=0)
    base = load_base(run, dtype=torch.float32)
    torch.testing.assert_close(_logits(base.model), _base_logits(tiny_llama_dir), rtol=0, atol=0)


def test_merged_dir_loads_as_a_whole_model(tiny_llama_dir, tmp_path):
    from tunesmith.export import merge

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    merge(adapter, tmp_path / "merged", verify=False)
    art = locate(tmp_path / "merged")
    assert (art.kind, art.method, art.base_model) == ("merged", "lora", str(tiny_llama_dir))
    loaded = load_adapted(art)
    want = adapted_logits(tiny_llama_dir, adapter, IDS)
    assert (_logits(loaded.model) - want).abs().max() < 1e-5


def test_merged_variant_records_the_base_identity(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    merged = load_merged(adapter, torch.float32)
    assert merged.base_identity["name"] == str(tiny_llama_dir)
    assert merged.base_identity["hashed"] == ["model.safetensors"]
    assert not hasattr(merged.model, "peft_config")  # a plain transformers model
    want = adapted_logits(tiny_llama_dir, adapter, IDS)
    assert (_logits(merged.model) - want).abs().max() < 1e-5


def test_unmergeable_method_is_refused(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "prefix")
    with pytest.raises(UserInputError, match="cannot be merged"):
        load_merged(adapter, torch.float32)


def test_qlora_adapter_loads_on_its_4bit_base_and_merges_dequantized(tiny_llama_dir, tmp_path):
    import bitsandbytes as bnb

    from tunesmith.methods.qlora import quantization_config

    run = make_run_dir(tiny_llama_dir, tmp_path / "run", "qlora")
    assert locate(run).quantized_base
    loaded = load_adapted(run, dtype=torch.float32)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
    quantized = adapted_logits(
        tiny_llama_dir, run / "adapter", IDS, quantization_config=quantization_config()
    )
    torch.testing.assert_close(_logits(loaded.model), quantized, rtol=0, atol=0)

    merged = load_merged(run, torch.float32).model
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert next(merged.parameters()).dtype == torch.float32
    # Within the stated nf4 tolerance of the 4-bit model (bf16 dequantization inside its matmuls).
    scale = max(1.0, float(quantized.abs().max()))
    assert (_logits(merged) - quantized).abs().max() < 8e-2 * scale


def test_the_adapters_own_tokenizer_wins_over_the_bases(tiny_llama_dir, tmp_path):
    run = make_run_dir(tiny_llama_dir, tmp_path / "run", "lora")
    tok = make_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(run / "adapter")
    assert locate(run).has_tokenizer
    for loaded in (load_adapted(run), load_base(run)):
        assert loaded.tokenizer.chat_template == tok.chat_template
        assert loaded.tokenizer.pad_token is not None


def test_missing_weights_name_the_file(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(UserInputError, match="adapter_model.safetensors: missing"):
        load_adapted(adapter)


def test_corrupt_adapter_config_names_the_file(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(UserInputError, match=r"adapter_config.json: unreadable"):
        locate(adapter)


def test_corrupt_weights_name_the_file(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 8)
    with pytest.raises(UserInputError, match="adapter_model.safetensors: not a readable"):
        load_adapted(adapter)


def test_adapter_for_another_base_is_a_clear_error(tiny_llama_dir, tmp_path):
    from tests.tiny import build_tiny_checkpoint

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    wider = build_tiny_checkpoint(tmp_path / "wider")  # its tokenizer, then wider weights
    vocab = len(make_tokenizer())
    make_tiny_model(vocab_size=vocab, hidden_size=128, intermediate_size=256).save_pretrained(wider)
    with pytest.raises(UserInputError, match="peft cannot load this adapter"):
        load_adapted(adapter, base_override=str(wider))


@pytest.mark.parametrize(
    "layout, words",
    [("missing", "no such run or adapter directory"), ("empty", "adapter_config.json"),
     ("checkpoint", "--model")],
)  # fmt: skip
def test_what_is_not_a_trained_result_is_refused(tiny_llama_dir, tmp_path, layout, words):
    path = {"missing": tmp_path / "nope", "empty": tmp_path, "checkpoint": tiny_llama_dir}[layout]
    with pytest.raises(UserInputError, match=words):
        locate(path)


def test_an_adapter_without_a_named_base_asks_for_model(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="pass --model"):
        load_adapted(adapter)
    loaded = load_adapted(adapter, base_override=str(tiny_llama_dir), dtype=torch.float32)
    assert loaded.base_model == str(tiny_llama_dir)


def test_load_flags_come_from_the_run_config(tiny_llama_dir, tmp_path):
    run = make_run_dir(tiny_llama_dir, tmp_path / "run", "lora")
    assert not locate(run).trust_remote_code and not locate(run).allow_pickle
    (run / "config.yaml").write_text(
        f"model: {tiny_llama_dir}\nmethod: lora\ntrust_remote_code: true\nallow-pickle: true\n"
    )
    art = locate(run / "adapter")
    assert art.trust_remote_code and art.allow_pickle
