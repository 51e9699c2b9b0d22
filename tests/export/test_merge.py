"""merge: merged checkpoints match the unmerged adapter, keep the dtype, record their origin."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.export.adapters import IDS, adapted_logits, make_adapter, make_run_dir
from tests.tiny import CHATML_TEMPLATE, make_tiny_model, make_tokenizer
from tunesmith.errors import WorkFailed
from tunesmith.export import merge
from tunesmith.export.merge import MERGE_RECORD


def _logits(path, ids=IDS):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "ia3"])
def test_merged_matches_unmerged_adapter(base_dir, method, tmp_path):
    adapter = make_adapter(base_dir, tmp_path / "adapter", method)
    result = merge(adapter, tmp_path / "merged")

    reference = adapted_logits(base_dir, adapter, IDS)
    merged = _logits(tmp_path / "merged")
    base = _logits(base_dir)
    assert (reference - base).abs().max() > 1e-2  # the adapter really changes the model
    assert (merged - reference).abs().max() < 1e-5
    assert result.verification.passed and result.verification.max_abs_diff < 1e-5
    assert result.dtype == "fp32" and result.method == method


def test_output_is_a_stock_checkpoint_with_provenance(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora")
    merge(adapter, tmp_path / "merged")
    out = tmp_path / "merged"
    assert {"config.json", "generation_config.json", "tokenizer.json", MERGE_RECORD} <= {
        p.name for p in out.iterdir()
    }
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
    assert AutoTokenizer.from_pretrained(out).chat_template == CHATML_TEMPLATE
    record = json.loads((out / MERGE_RECORD).read_text())
    weights = tiny_llama_dir / "model.safetensors"
    expected = hashlib.sha256(b"model.safetensors\0" + weights.read_bytes()).hexdigest()
    assert record["base"]["name"] == str(tiny_llama_dir)
    assert record["base"]["sha256"] == expected
    assert record["adapter"]["path"] == str(adapter.resolve())
    assert record["method"] == "lora" and record["dtype"] == "fp32"
    assert record["verification"]["passed"] is True
    # No leftovers from the atomic write beside the output.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _bf16_base(path):
    tok = make_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok)).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _stored_dtypes(out):
    dtypes = set()
    for f in out.glob("*.safetensors"):
        with safe_open(f, framework="pt") as fh:
            dtypes |= {fh.get_tensor(k).dtype for k in fh.keys()}  # noqa: SIM118
    return dtypes


def test_bf16_base_stays_bf16(tmp_path):
    base = _bf16_base(tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", "lora")
    result = merge(adapter, tmp_path / "merged")
    assert result.dtype == "bf16"
    assert _stored_dtypes(tmp_path / "merged") == {torch.bfloat16}
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    # bf16 rounding of W + ΔW: within the stated bf16 tolerance of the fp32 adapted model.
    assert result.verification.passed and result.verification.tolerance == "bf16"


def test_requested_dtype_wins(tiny_qwen2_dir, tmp_path):
    adapter = make_adapter(tiny_qwen2_dir, tmp_path / "adapter", "lora")
    result = merge(adapter, tmp_path / "merged", dtype="fp16")
    assert result.dtype == "fp16"
    assert _stored_dtypes(tmp_path / "merged") == {torch.float16}


def test_nan_adapter_fails_and_leaves_nothing(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora", nan=True)
    with pytest.raises(WorkFailed, match="NaN"):
        merge(adapter, tmp_path / "merged", verify=False)
    assert not (tmp_path / "merged").exists()


def test_qlora_merges_into_the_dequantized_base(tiny_llama_dir, tmp_path):
    """QLoRA: W' = dequant(NF4(W)) + s·B·A, pinned by a float64 recomputation.

    Against the QLoRA model as trained (4-bit base, fp32 compute) the merged checkpoint differs
    only by bitsandbytes dequantizing each NF4 block to bf16 inside its CPU matmul: within the
    stated ``nf4`` tolerance (8e-2 x logit scale); measured ~8e-3 here. Against the *full-precision* base + adapter it differs by
    the NF4 rounding of W alone (4-bit codes, absmax-scaled blocks of 64: a per-weight error up
    to ~1/7 of the block's absmax); we state that bound as 0.5 × the logit scale here and
    measure much less.
    """
    from bitsandbytes.functional import dequantize_4bit
    from safetensors.torch import load_file

    from tunesmith.methods.qlora import quantization_config as qlora_quantization_config

    run = make_run_dir(tiny_llama_dir, tmp_path / "run", "qlora")
    result = merge(run, tmp_path / "merged")
    assert result.verification.passed and result.verification.tolerance == "nf4"

    qc = qlora_quantization_config()
    quantized = adapted_logits(tiny_llama_dir, run / "adapter", IDS, quantization_config=qc)
    full = adapted_logits(tiny_llama_dir, run / "adapter", IDS)
    merged = _logits(tmp_path / "merged")
    scale = max(1.0, float(quantized.abs().max()))
    assert (merged - quantized).abs().max() < 8e-2 * scale
    print("qlora merged vs 4-bit adapted", float((merged - quantized).abs().max()))
    print("qlora merged vs full-precision adapted", float((merged - full).abs().max()))
    assert 1e-4 < (merged - full).abs().max() < 0.5 * max(1.0, float(full.abs().max()))

    # float64 recomputation of one merged weight from the 4-bit base and the adapter.
    base4 = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=qc)
    q = base4.model.layers[0].self_attn.q_proj
    w = dequantize_4bit(q.weight.data, q.weight.quant_state).double()
    ad = load_file(run / "adapter" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    delta = (8 / 4) * ad[key.format("B")].double() @ ad[key.format("A")].double()
    merged_w = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").model.layers[0]
    got = merged_w.self_attn.q_proj.weight.double()
    assert (got - (w + delta)).abs().max() < 1e-6
