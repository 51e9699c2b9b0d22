"""GGUF export: llama.cpp names and layout, hparams, tokenizer metadata, round trip by format."""

from __future__ import annotations

import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.export.adapters import IDS, adapted_logits, make_adapter
from tests.tiny import CHATML_TEMPLATE
from tunesmith.export import export

# Round-trip bound on max |Δlogit| against the unmerged adapted model, by tensor type, as a
# fraction of max(1, max|logit|): f32 is exact up to float re-association; f16 rounds each
# weight to 11 mantissa bits, bf16 to 8, q8_0 to int8 per 32-value block with an f16 scale,
# q5_0 / q4_0 to 5 / 4 bits per 32-value block (measured ~0.06 / ~0.21 on these random models).
ROUND_TRIP = {"f32": 1e-5, "f16": 1e-2, "bf16": 4e-2, "q8_0": 6e-2, "q5_0": 0.15, "q4_0": 0.4}

CASES = [
    ("llama", "f32"),
    ("llama", "f16"),
    ("llama", "q8_0"),
    ("qwen2", "f32"),
    ("qwen2", "bf16"),
    ("qwen2", "q8_0"),
    ("llama", "q4_0"),
    ("qwen2", "q5_0"),
]


def _base(arch, tiny_llama_dir, tiny_qwen2_dir):
    return {"llama": tiny_llama_dir, "qwen2": tiny_qwen2_dir}[arch]


@pytest.mark.parametrize(("arch", "gguf_type"), CASES)
def test_round_trip_through_transformers_reader(
    arch, gguf_type, tiny_llama_dir, tiny_qwen2_dir, tmp_path
):
    base = _base(arch, tiny_llama_dir, tiny_qwen2_dir)
    adapter = make_adapter(base, tmp_path / "adapter", "lora")
    out = tmp_path / "model.gguf"
    result = export(adapter, "gguf", out, quant=gguf_type)
    assert result.verification.passed and result.verification.chat_template_preserved

    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=out.name, dtype=torch.float32
    )
    with torch.inference_mode():
        got = reloaded.eval()(input_ids=IDS).logits.float()
    want = adapted_logits(base, adapter, IDS)
    err = float((got - want).abs().max())
    assert err < ROUND_TRIP[gguf_type] * max(1.0, float(want.abs().max()))
    if gguf_type != "f32":
        assert err > 1e-6  # the type really was applied
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    assert tok.chat_template == CHATML_TEMPLATE
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_names_hparams_and_tokenizer_metadata(arch, tiny_llama_dir, tiny_qwen2_dir, tmp_path):
    base = _base(arch, tiny_llama_dir, tiny_qwen2_dir)
    adapter = make_adapter(base, tmp_path / "adapter", "lora")
    out = tmp_path / "model.gguf"
    export(adapter, "gguf", out, quant="f16")
    reader = GGUFReader(out)

    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"]
    per_block += ["ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    expected |= {f"blk.{b}.{n}.weight" for b in range(2) for n in per_block}
    if arch == "qwen2":  # Qwen2 has q/k/v biases
        expected |= {f"blk.{b}.attn_{x}.bias" for b in range(2) for x in "qkv"}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert set(types) == expected
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"

    assert _field(reader, "general.architecture") == arch
    hparams = {
        "context_length": 512,
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 128,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
    }
    for key, value in hparams.items():
        assert _field(reader, f"{arch}.{key}") == value, key
    assert _field(reader, f"{arch}.rope.freq_base") == pytest.approx(10000.0)
    assert _field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)

    tok = AutoTokenizer.from_pretrained(base)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == ("qwen2" if arch == "qwen2" else "gpt-2")
    assert tokens == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[tok.convert_tokens_to_ids("<|im_start|>")] == 3  # CONTROL
    assert types[tok.convert_tokens_to_ids("SELECT")] == 1  # NORMAL
    assert len(_field(reader, "tokenizer.ggml.merges")) > 100
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert _field(reader, "tokenizer.chat_template") == CHATML_TEMPLATE


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rotary_permutation_only_for_llama(arch, tiny_llama_dir, tiny_qwen2_dir, tmp_path):
    """GGUF row h·d + 2i + j holds HF row h·d + j·d/2 + i for Llama (interleaved RoPE pairs)."""
    base = _base(arch, tiny_llama_dir, tiny_qwen2_dir)
    adapter = make_adapter(base, tmp_path / "adapter", "lora")
    merged_dir = tmp_path / "merged"
    export(adapter, "safetensors", merged_dir, dtype="fp32")
    export(adapter, "gguf", tmp_path / "m.gguf", quant="f32")
    hf = AutoModelForCausalLM.from_pretrained(merged_dir).model.layers[1].self_attn
    tensors = {
        t.name: torch.from_numpy(t.data.copy()) for t in GGUFReader(tmp_path / "m.gguf").tensors
    }
    for proj, gguf_name, n_head in ((hf.q_proj, "attn_q", 4), (hf.k_proj, "attn_k", 2)):
        w, d = proj.weight.detach(), 16
        expected = torch.empty_like(w)
        for h in range(n_head):
            for i in range(d // 2):
                for j in range(2):
                    src = h * d + j * d // 2 + i
                    dst = h * d + 2 * i + j
                    expected[dst] = w[src] if arch == "llama" else w[dst]
        assert torch.equal(tensors[f"blk.1.{gguf_name}.weight"], expected)


def test_unsupported_architecture_is_bad_input(tmp_path):
    from transformers import MistralConfig

    from tests.tiny import make_tokenizer
    from tunesmith.errors import UserInputError

    tok = make_tokenizer()
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter", "lora")
    with pytest.raises(UserInputError, match="supports llama, qwen2"):
        export(adapter, "gguf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
