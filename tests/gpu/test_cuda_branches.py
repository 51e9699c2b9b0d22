"""The CUDA-only branches of src/ on a real device (skipped without one; docs/gpu.md lists them).

The CPU suite checks the decisions with a ``torch.device("cuda")`` object; these run them:
bf16 autocast on CUDA, sdpa attention, bitsandbytes 4-bit loading and dequantization, the
allocator's peak statistics, CUDA RNG state in checkpoints, the device's memory as the plan's
budget, and the real CLI training a tiny model on the GPU.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.xdist_group("gpu")]

CUDA = torch.device("cuda")


def _config(model_dir, method="lora", **extra):
    from tunesmith.config import make_config

    return make_config({"model": str(model_dir), "method": method, "seq_len": 64, **extra})


def _batch(vocab: int, b: int = 2, s: int = 16):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (b, s), generator=gen).to(CUDA)


def test_auto_precision_is_the_devices_bf16():
    from tunesmith.precision import default_device, resolve_precision

    assert default_device().type == "cuda"
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision("auto", CUDA) == expected


def test_lora_loads_with_sdpa_bf16_base_and_no_cpu_fast_paths(tiny_llama_dir):
    from tunesmith.train.steps import build_model

    built = build_model(_config(tiny_llama_dir), CUDA)
    model, precision, autocast = built.model, built.precision, built.autocast
    base = model.get_base_model()
    assert base.config._attn_implementation == "sdpa"
    assert precision == "bf16" and autocast is torch.bfloat16
    assert base.model.embed_tokens.weight.dtype is torch.bfloat16  # frozen base stored in bf16
    assert all(
        p.dtype is torch.float32 and p.is_cuda for p in model.parameters() if p.requires_grad
    )
    assert built.fast_paths.installed == {}  # nothing CPU-specific on CUDA
    assert type(built.fast_paths.pass_policy).__name__ == "PassPolicy"  # the reference


def test_sdpa_training_step_runs_on_a_fused_kernel_with_padding(tiny_llama_dir):
    """The planner counts no s x s probabilities for sdpa: the math fallback would keep them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
    ).to(CUDA)
    ids = _batch(model.config.vocab_size, b=2, s=32)
    mask = torch.ones_like(ids)
    mask[1, 24:] = 0  # a padded row, as in a training micro-batch
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
    assert torch.isfinite(loss)


def test_bf16_autocast_step_on_cuda_matches_fp32_within_bf16_rounding(tiny_llama_dir):
    from tunesmith.train.speed import compute_context
    from tunesmith.train.steps import build_model

    torch.manual_seed(0)
    built = build_model(_config(tiny_llama_dir, dropout=0.0), CUDA)
    model, autocast = built.model, built.autocast
    ids = _batch(model.config.vocab_size)
    with compute_context(model, CUDA, autocast, keep_input_dtype=True):
        out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype is torch.bfloat16
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype is torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():  # reference: the same weights in fp32, no autocast
        ref = model.float()(input_ids=ids, labels=ids).loss
    assert float(out.loss) == pytest.approx(float(ref), rel=2e-2)


def test_qlora_loads_nf4_with_double_quant_and_trains(tiny_llama_dir):
    import bitsandbytes as bnb

    from tunesmith.train.speed import compute_context
    from tunesmith.train.steps import build_model

    built = build_model(_config(tiny_llama_dir, "qlora", dropout=0.0), CUDA)
    model, autocast = built.model, built.autocast
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and all(m.weight.is_cuda for m in linears)
    state = linears[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # double quantization
    assert linears[0].compute_dtype is torch.bfloat16
    ids = _batch(model.config.vocab_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        with compute_context(model, CUDA, autocast, keep_input_dtype=True):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert all(map(lambda x: x == x, losses)) and losses[-1] < losses[0]


def test_qlora_dequantize_on_cuda_reproduces_the_4bit_layers(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.methods.qlora import dequantize, quantization_config

    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=quantization_config(), device_map={"": 0}
    )
    ids = _batch(quantized.config.vocab_size)
    with torch.no_grad():
        ref = quantized(input_ids=ids).logits.float()
        plain = dequantize(quantized)
        assert not getattr(plain, "is_loaded_in_4bit", False)
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)  # bf16 compute vs fp32


def test_peak_memory_reads_the_cuda_allocator():
    from tunesmith.train.loop import peak_memory_bytes, reset_peak_memory

    reset_peak_memory(CUDA)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)
    assert peak_memory_bytes(CUDA) >= block.numel()
    del block
    torch.cuda.empty_cache()
    reset_peak_memory(CUDA)
    assert peak_memory_bytes(CUDA) < 64 * 2**20


def test_checkpoint_rng_state_restores_the_cuda_generator():
    from tunesmith.train import checkpoint

    state = checkpoint._rng_state()
    assert state["cuda"]  # one state per visible device
    first = torch.randn(4, device=CUDA)
    checkpoint._set_rng_state(state)
    torch.testing.assert_close(torch.randn(4, device=CUDA), first, rtol=0, atol=0)


def test_plan_budget_of_cuda_is_the_devices_memory():
    from tunesmith.plan.gpus import device_budget_bytes

    total = torch.cuda.get_device_properties(0).total_memory
    assert device_budget_bytes("cuda") == total == device_budget_bytes("cuda:0")


def test_latency_forward_call_waits_for_the_kernels(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.compare.latency import forward_call

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).to(CUDA)
    out = forward_call(model, _batch(model.config.vocab_size, b=1).cpu())()
    assert out.logits.is_cuda and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_train_cli_runs_on_cuda(method, tiny_llama_dir, small_demo_data, tmp_path):
    from tunesmith.cli import main

    train, evals = small_demo_data
    out = tmp_path / method
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--method", method, "--output", str(out),
            "--data", str(train), "--eval-data", str(evals), "--max-steps", "3",
            "--batch-size", "4", "--eval-limit", "2", "--max-new-tokens", "4",
            "--skip-base-eval", "--save-steps", "2", "--logging-steps", "1",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(r["peak_mem_bytes"] > 0 for r in train_rows)  # torch.cuda.max_memory_allocated
    assert (out / "checkpoints").is_dir() and (out / "eval.json").is_file()
