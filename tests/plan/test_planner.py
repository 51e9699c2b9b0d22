"""plan(): verdicts, recommendations, the JSON object and plan.json."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import ConfigError
from tunesmith.plan import device_budget_bytes, plan, plan_for_run, write_plan
from tunesmith.plan.planner import BREAKDOWN_KEYS, verdict_for
from tunesmith.plan.recommend import HEADROOM

GIB = 1024**3


def test_json_is_exactly_the_design_object():
    p = plan("embedded", "lora", gpu="24GB", batch_size=2, seq_len=256)
    j = p.to_json()
    assert list(j) == ["verdict", "total_bytes", "budget_bytes", "breakdown", "recommendation"]
    assert set(j["breakdown"]) == set(BREAKDOWN_KEYS) == {
        "weights", "trainable", "gradients", "optimizer", "activations", "logits", "overhead",
    }  # fmt: skip
    assert sum(j["breakdown"].values()) == j["total_bytes"]
    assert j["budget_bytes"] == 24 * GIB
    assert j["verdict"] == "fits"
    json.dumps(j)  # serializable as is


def test_verdict_thresholds():
    assert verdict_for(int(0.89 * GIB), GIB) == "fits"
    assert verdict_for(int(0.95 * GIB), GIB) == "tight"
    assert verdict_for(GIB + 1, GIB) == "does-not-fit"


def test_llama2_13b_lora_on_24gb_gets_a_concrete_answer_that_fits():
    p = plan("llama-2-13b", "lora", gpu="24GB", batch_size=4, seq_len=2048, grad_accum=2)
    assert p.verdict == "does-not-fit"  # 13B bf16 weights alone are 24.2 GiB
    assert p.breakdown["weights"] == 2 * 13_015_864_320
    rec = p.recommendation
    assert rec["fits"] and rec["verdict"] == "fits"
    assert rec["method"] == "qlora" and rec["quantization"] == "nf4-double-quant"
    assert rec["total_bytes"] <= HEADROOM * 24 * GIB
    # The effective batch (micro-batch x accumulation) is kept.
    assert rec["batch_size"] * rec["grad_accum"] >= 4 * 2
    assert rec["changes"]
    # The recommended configuration, planned as the main one, fits as promised.
    again = plan(
        "llama-2-13b", rec["method"], gpu="24GB", batch_size=rec["batch_size"],
        seq_len=rec["seq_len"], grad_accum=rec["grad_accum"],
        gradient_checkpointing=rec["gradient_checkpointing"], optimizer=rec["optimizer"],
    )  # fmt: skip
    assert again.verdict == "fits" and again.total_bytes == rec["total_bytes"]


def test_a_run_that_fits_is_recommended_unchanged():
    p = plan("smollm2-135m", "lora", gpu="80GB", batch_size=2, seq_len=512)
    rec = p.recommendation
    assert rec["changes"] == [] and rec["total_bytes"] == p.total_bytes


def test_checkpointing_auto_turns_on_only_when_needed():
    small = plan("qwen2.5-0.5b", "lora", gpu="80GB", batch_size=1, seq_len=512)
    big = plan("qwen2.5-7b", "lora", gpu="24GB", batch_size=4, seq_len=2048)
    assert small.settings.gradient_checkpointing is False
    assert big.settings.gradient_checkpointing is True
    forced = plan("qwen2.5-0.5b", "lora", gpu="80GB", gradient_checkpointing=True)
    assert forced.settings.gradient_checkpointing is True


def test_nothing_fits_says_so_with_the_smallest_configuration():
    p = plan("llama-3.1-70b", "lora", gpu="t4", batch_size=1, seq_len=1024)
    assert p.verdict == "does-not-fit"
    assert p.recommendation["fits"] is False
    assert p.recommendation["method"] == "qlora"  # the smallest there is
    assert p.recommendation["total_bytes"] < p.total_bytes


def test_qlora_is_smaller_than_lora_and_full_is_largest():
    totals = {
        m: plan("llama-3.1-8b", m, gpu="80GB", batch_size=1, seq_len=1024).total_bytes
        for m in ("full", "lora", "qlora")
    }
    assert totals["qlora"] < totals["lora"] < totals["full"]


def test_cpu_plan_uses_system_ram_and_no_cuda_context():
    p = plan("embedded", "lora", gpu="cpu", batch_size=1, seq_len=128)
    assert p.budget_bytes == device_budget_bytes("cpu")
    assert p.detail["runtime"] == GIB


def test_the_optimizer_step_temporaries_follow_the_loops_adamw_kernel():
    # One CPU process trains with fused AdamW (no temporaries); torchrun ranks and CUDA use
    # foreach, whose sqrt(exp_avg_sq) for every parameter is one state-sized temporary.
    cpu = plan("embedded", "full", gpu="cpu", batch_size=1, seq_len=128)
    ranks = plan("embedded", "full", gpu="cpu", batch_size=1, seq_len=128, nproc=2)
    gpu = plan("embedded", "full", gpu="80GB", batch_size=1, seq_len=128)
    assert cpu.detail["optimizer_step_tmp"] == 0
    assert ranks.detail["optimizer_step_tmp"] > 0
    assert gpu.detail["optimizer_step_tmp"] > 0


def test_plan_for_run_with_a_loaded_config_and_write_plan(tiny_llama_dir, tmp_path):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    p = plan_for_run(cfg, device=8 * GIB, method="lora", batch_size=2, seq_len=64, grad_accum=4)
    assert p.budget_bytes == 8 * GIB and p.verdict == "fits"
    path = write_plan(p, tmp_path / "run" / "plan.json")
    saved = json.loads(path.read_text())
    assert {k: saved[k] for k in p.to_json()} == p.to_json()
    assert saved["inputs"]["grad_accum"] == 4 and saved["inputs"]["method"] == "lora"
    assert not list(path.parent.glob(".*tmp"))  # written atomically, nothing left behind


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(method="nope"), "method"),
        (dict(batch_size=0), "batch-size"),
        (dict(seq_len=-1), "seq-len"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(precision="fp8"), "precision"),
        (dict(gpu="rtx9999"), "gpu"),
    ],
)
def test_bad_input_names_the_key(kwargs, key):
    kwargs = {"method": "lora", **kwargs}
    with pytest.raises(ConfigError) as err:
        plan("embedded", **kwargs)
    assert err.value.key == key


def test_traced_plan_is_close_to_the_analytic_one():
    kw = dict(gpu="24GB", batch_size=1, seq_len=128, gradient_checkpointing=False, dropout=0.0)
    analytic = plan("smollm2-135m", "lora", **kw)
    traced = plan("smollm2-135m", "lora", traced=True, **kw)
    assert sum(traced.breakdown.values()) == traced.total_bytes
    assert traced.total_bytes == pytest.approx(analytic.total_bytes, rel=0.10)


def test_prefix_methods_are_never_told_to_checkpoint():
    p = plan("llama-2-7b", "prefix", gpu="24GB", batch_size=8, seq_len=2048)
    assert p.settings.gradient_checkpointing is False
    assert p.recommendation["gradient_checkpointing"] is False
    assert p.recommendation["method"] == "prefix"
