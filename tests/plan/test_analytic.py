"""The analytic model's terms, pinned against bitsandbytes, a real AdamW step and the tracer."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.tiny import make_tiny_model
from tunesmith.methods.base import MethodArgs, get_method
from tunesmith.plan.analytic import (
    NF4_BITS_PER_PARAM,
    StepSettings,
    optimizer_bytes,
    step_terms,
    weight_bytes,
)
from tunesmith.plan.configs import bundled_config
from tunesmith.plan.trace import traced_estimate
from tunesmith.shape import model_shape


def test_nf4_double_quant_bits_match_bitsandbytes():
    from bitsandbytes.functional import quantize_4bit

    w = torch.randn(256, 1024, dtype=torch.bfloat16)
    packed, state = quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    stored = (
        packed.numel() * packed.element_size()
        + state.absmax.numel() * state.absmax.element_size()  # 8-bit first-level absmax
        + state.state2.absmax.numel() * state.state2.absmax.element_size()  # fp32 second level
    )
    assert stored * 8 / w.numel() == pytest.approx(NF4_BITS_PER_PARAM, abs=1e-9)
    assert pytest.approx(4.127, abs=1e-3) == NF4_BITS_PER_PARAM


def test_qlora_weights_keep_embeddings_and_upcast_them():
    shape = model_shape(bundled_config("qwen2.5-7b"))
    q = StepSettings(method="qlora", batch_size=1, seq_len=512)
    kept = shape.embed_params + shape.lm_head_params + shape.other_params
    linear = shape.linear_params * NF4_BITS_PER_PARAM / 8
    assert weight_bytes(shape, q) == pytest.approx(linear + 4 * kept, abs=1)
    no_upcast = StepSettings(method="qlora", batch_size=1, seq_len=512, kbit_upcast=False)
    assert weight_bytes(shape, q) - weight_bytes(shape, no_upcast) == 2 * kept
    assert weight_bytes(shape, StepSettings("lora", 1, 512)) == 2 * shape.total_params


def _state_bytes(opt) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_optimizer_bytes_exact_after_one_real_adamw_step(method):
    model = make_tiny_model("llama")
    if method == "lora":
        model = get_method("lora").apply(model, MethodArgs())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 512, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    n = sum(p.numel() for p in params)
    assert _state_bytes(opt) == optimizer_bytes(n, len(params), 4, "adamw")
    spec, args = get_method(method), MethodArgs()
    assert spec.count_trainable(model.config, args) == n
    assert spec.count_tensors(model.config, args) == len(params)


def test_eight_bit_adamw_is_about_a_quarter():
    n = 10_000_000
    eight = optimizer_bytes(n, 10, 4, "adamw8bit")
    assert 2 * n < eight < 2.04 * n
    assert optimizer_bytes(n, 10, 4, "adamw") == 8 * n + 40
    assert optimizer_bytes(n, 10, 4, "sgd") == 0


ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tiny_cfg(arch):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        vocab_size=4000, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=arch == "qwen2",
    )  # fmt: skip


CASES = [
    ("llama", "lora", ("q_proj", "v_proj"), False, "sdpa", 2, 128),
    ("llama", "lora", ALL, True, "eager", 1, 256),
    ("qwen2", "lora", ALL, False, "eager", 2, 128),
    ("llama", "full", (), False, "sdpa", 4, 64),
    ("qwen2", "full", (), True, "sdpa", 2, 128),
    ("llama", "dora", ALL, False, "sdpa", 2, 128),  # the rescaled outputs: a quarter of it
    ("qwen2", "dora", ("q_proj", "v_proj"), True, "eager", 1, 256),
    ("llama", "dora", ALL, True, "sdpa", 1, 16),  # the weight norm's transient: a fifth of it
]


@pytest.mark.parametrize("arch, method, targets, gc, attn, b, s", CASES)
def test_analytic_step_matches_traced_step(arch, method, targets, gc, attn, b, s):
    cfg = _tiny_cfg(arch)
    args = MethodArgs(dropout=0.0, target=targets or ("q_proj", "v_proj"))
    shape = model_shape(cfg)
    settings = StepSettings(
        method=method, batch_size=b, seq_len=s, gradient_checkpointing=gc, attn=attn,
        targets=args.target, dropout=0.0, foreach=False, master_fp32=False,
    )  # fmt: skip
    spec = get_method(method)
    terms = step_terms(
        shape, settings, spec.count_trainable(cfg, args), spec.count_tensors(cfg, args)
    )
    traced = traced_estimate(
        cfg, method, batch_size=b, seq_len=s, gradient_checkpointing=gc, attn=attn, args=args
    )
    assert terms.optimizer == traced.optimizer_bytes
    # The analytic peak (without CUDA context and fragmentation) within 5% of the traced one.
    assert terms.allocated == pytest.approx(traced.total_peak_bytes, rel=0.05)


def test_checkpointing_and_sdpa_save_memory_and_terms_sum():
    shape = model_shape(bundled_config("llama-2-7b"))
    n = 4_194_304
    results = {}
    for gc, attn in itertools.product((False, True), ("sdpa", "eager")):
        st = StepSettings("lora", 4, 2048, gradient_checkpointing=gc, attn=attn)
        t = step_terms(shape, st, n, 128)
        assert t.total == sum(
            getattr(t, k)
            for k in (
                "weights",
                "trainable",
                "gradients",
                "optimizer",
                "activations",
                "logits",
                "overhead",
            )
        )
        results[gc, attn] = t.total
    assert results[True, "sdpa"] < results[False, "sdpa"] < results[False, "eager"]
    # eager's score matrices: 4 x 32 x 2048^2 x (fp32 softmax + bf16 copy) per layer
    assert results[False, "eager"] - results[False, "sdpa"] >= 32 * 4 * 32 * 2048**2 * 6


def test_chunked_loss_and_trained_positions_shrink_logits():
    shape = model_shape(bundled_config("qwen2.5-0.5b"))
    full = step_terms(shape, StepSettings("lora", 4, 2048), 1, 1)
    half = step_terms(shape, StepSettings("lora", 4, 2048, logits_fraction=0.5), 1, 1)
    chunk = step_terms(shape, StepSettings("lora", 4, 2048, loss_chunk=1024), 1, 1)
    assert full.logits == 12 * 4 * 2048 * shape.vocab  # 4 retained + 8 in the loss backward
    assert half.logits == full.logits // 2
    assert chunk.logits == full.logits // 8


def test_qlora_kbit_upcast_makes_checkpoints_fp32():
    shape = model_shape(bundled_config("qwen2.5-0.5b"))
    kw = dict(batch_size=2, seq_len=1024, gradient_checkpointing=True)
    qlora = step_terms(shape, StepSettings("qlora", **kw), 1, 1).detail["saved_activations"]
    lora = step_terms(shape, StepSettings("lora", **kw), 1, 1).detail["saved_activations"]
    plain = step_terms(shape, StepSettings("qlora", kbit_upcast=False, **kw), 1, 1)
    # final norm input (fp32) + embedding output (fp32 after the upcast, else bf16)
    outside_q, outside_l = (2 * 1024 * (4 + e) * shape.hidden for e in (4, 2))
    assert qlora - outside_q == 2 * (lora - outside_l)  # fp32 instead of bf16 block inputs
    assert plain.detail["saved_activations"] == lora


def test_qlora_without_autocast_keeps_fp32_activations():
    shape = model_shape(bundled_config("llama-2-7b"))
    kw = dict(batch_size=1, seq_len=1024, targets=("q_proj", "v_proj"), dropout=0.0)
    qlora = step_terms(shape, StepSettings("qlora", **kw), 1, 1)
    lora = step_terms(shape, StepSettings("lora", **kw), 1, 1)
    # The block's bf16 tensors (attention q/k/v/out, MLP) double; norms were fp32 already.
    assert 1.5 < qlora.detail["layer_activation"] / lora.detail["layer_activation"] < 2


@pytest.mark.parametrize("gc", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_qlora_analytic_matches_real_bitsandbytes_step_on_cpu(tmp_path, gc):
    """NF4 weights, k-bit upcast and fp32 activations against a real 4-bit step (profiler)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tunesmith.plan.livebytes import profiled_cpu_peak
    from tunesmith.plan.trace import run_step

    cfg = _tiny_cfg("llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, quantization_config=quant, device_map={"": "cpu"}
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=8, lora_dropout=0.0, target_modules=list(ALL)))
    measured = profiled_cpu_peak(
        lambda: run_step(model, batch_size=2, seq_len=128, gradient_checkpointing=gc, vocab=4000)
    )
    args = MethodArgs(target=ALL, dropout=0.0)
    shape = model_shape(cfg)
    settings = StepSettings(
        "qlora", 2, 128, gradient_checkpointing=gc, targets=ALL, dropout=0.0, foreach=False,
        device="cpu",
    )  # fmt: skip
    lora = get_method("lora")
    terms = step_terms(
        shape, settings, lora.count_trainable(cfg, args), lora.count_tensors(cfg, args)
    )
    assert terms.allocated == pytest.approx(measured, rel=0.05)


def test_full_finetuning_keeps_fp32_masters_under_autocast_by_default():
    shape = model_shape(bundled_config("qwen2.5-0.5b"))
    n = shape.total_params
    mixed = step_terms(shape, StepSettings("full", 1, 512), n, 300)
    pure = step_terms(shape, StepSettings("full", 1, 512, master_fp32=False), n, 300)
    assert mixed.weights == 4 * n and pure.weights == 2 * n
    assert mixed.optimizer == 8 * n + 4 * 300 and pure.optimizer == 4 * n + 4 * 300
    # the 16-bit casts of every linear that autocast keeps for the backward
    head = shape.lm_head_params or shape.embed_params
    assert mixed.detail["autocast_weight_copies"] == 2 * (shape.linear_params + head)
