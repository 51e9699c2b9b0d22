"""bench train: the FLOP formula, the headline ratios and their four lines, the child runner."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.bench.machine import one_line
from tunesmith.bench.train.data import prepare_data
from tunesmith.bench.train.measure import (
    BenchSettings,
    eval_loss,
    linear_params,
    matmul_ceiling,
    useful_flops,
)
from tunesmith.bench.train.runner import machine_of, run_child
from tunesmith.bench.train.summary import FINAL_KEYS, final_lines, parse_final_lines, summarize
from tunesmith.data.records import Conversation, Turn
from tunesmith.models import load_model_and_tokenizer
from tunesmith.train.fastpath import native


def _lora(model, r=4):
    cfg = LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(model, cfg)


def test_useful_flops_formula():
    params = {"body": 10, "head": 3, "adapter": 2}
    # 4*10*5 (frozen body, every real token) + 4*3*2 (head, trained only) + 6*2*5 (adapter)
    assert useful_flops(params, processed=5, trained=2) == 284.0


def test_linear_params_split_body_head_adapter(tiny_llama_dir):
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), r=4)
    c = model.config
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per_layer = (
        c.hidden_size * (2 * c.hidden_size + 2 * kv) + 3 * c.hidden_size * c.intermediate_size
    )
    adapter_per_layer = 4 * (c.hidden_size + c.hidden_size) + 4 * (c.hidden_size + kv)
    assert linear_params(model) == {
        "body": c.num_hidden_layers * per_layer,
        "head": c.vocab_size * c.hidden_size,
        "adapter": c.num_hidden_layers * adapter_per_layer,
    }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert linear_params(model)["adapter"] == trainable


def test_eval_loss_matches_transformers_mean_loss(tiny_llama_dir):
    model, tok, _ = load_model_and_tokenizer(str(tiny_llama_dir))
    convs = [
        Conversation((Turn("user", f"question {i}?"), Turn("assistant", f"answer {i} " * (i + 1))))
        for i in range(20)  # > 16: two micro-batches of different lengths
    ]
    got = eval_loss(model, tok, convs, BenchSettings(seq_len=128), autocast_dtype=None)
    from tunesmith.data.dataset import collate, tokenize_conversations

    batch = collate(tokenize_conversations(tok, convs, seq_len=128), tok.pad_token_id)
    model64 = model.double()
    with torch.no_grad():  # float64 reference: transformers' own mean over trained tokens
        ref = model64(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
    assert got == pytest.approx(float(ref), rel=1e-5)


def test_matmul_ceiling_is_a_rate():
    rate = matmul_ceiling("fp32", n=128, reps=2)
    assert math.isfinite(rate) and rate > 1e6  # any CPU does > 1 MFLOP/s


def _row(variant, tps, rss, ceiling=0.0, rep=0, limit=0.0):
    return {
        "variant": variant,
        "rep": rep,
        "tokens_per_s": tps,
        "peak_rss_bytes": rss,
        "ceiling_ratio": ceiling,
        "shape_limit_ratio": limit,
        "order_limit_ratio": 2 * limit,
    }


def test_summary_medians_and_final_lines():
    rows = [
        _row("tunesmith", 600.0, 1000, 0.4, rep=0, limit=0.3),
        _row("tunesmith", 400.0, 1200, 0.6, rep=1, limit=0.1),
        _row("tunesmith", 500.0, 900, 0.5, rep=2, limit=0.2),
        _row("trl-default", 100.0, 2000),
        _row("trl-default", 200.0, 2000),
        _row("trl-tuned", 400.0, 1600),
    ]
    summary = summarize(rows)
    assert summary == pytest.approx(
        {
            "speedup_vs_trl_default": 500.0 / 150.0,
            "speedup_vs_trl_tuned": 1.25,
            "peak_rss_ratio": 0.5,
            "ceiling_ratio": 0.5,
            "shape_limit_ratio": 0.2,
            "order_limit_ratio": 0.4,
        }
    )
    lines = final_lines(summary)
    assert lines == [
        "speedup_vs_trl_default=3.333",
        "speedup_vs_trl_tuned=1.250",
        "peak_rss_ratio=0.500",
        "ceiling_ratio=0.500",
        "shape_limit_ratio=0.200",
        "order_limit_ratio=0.400",
    ]
    output = "table ...\nrep 1/1\n" + "\n".join(lines) + "\n"
    assert parse_final_lines(output) == pytest.approx(
        {k: float(line.split("=")[1]) for k, line in zip(FINAL_KEYS, lines, strict=True)}
    )
    with pytest.raises(ValueError, match="does not end with"):
        parse_final_lines("\n".join(lines[::-1]))


def test_missing_variant_gives_nan_not_an_error():
    summary = summarize([_row("tunesmith", 500.0, 1000, 0.5)])
    assert math.isnan(summary["speedup_vs_trl_default"])
    assert final_lines(summary)[0] == "speedup_vs_trl_default=nan"


def test_trl_variants_without_trl_stop_with_the_extra_to_install(monkeypatch):
    import argparse

    from tunesmith.bench import train
    from tunesmith.errors import UserInputError

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    monkeypatch.setattr(train.trl_peer, "available", lambda: False)
    with pytest.raises(UserInputError, match=r"tunesmith\[bench\]"):
        train.run(parser.parse_args(["--quick"]))


@pytest.mark.slow
def test_child_runner_tunesmith_and_trl_default(tiny_llama_dir, tmp_path):
    settings = BenchSettings(
        model=str(tiny_llama_dir), steps=2, n_train=60, n_eval=16, eval_limit=8, seq_len=256
    )
    data = prepare_data(tmp_path / "data", settings)
    rows = [
        run_child(v, settings, data, tmp_path / v, timeout_s=300)
        for v in ("tunesmith", "trl-default")
    ]
    ours, trl = rows
    assert (ours["gradient_checkpointing"], trl["gradient_checkpointing"]) == (False, True)
    assert trl["precision"] == "fp32"  # SFTConfig on a CPU, as a user must set it
    for row in rows:
        assert row["timed_steps"] == 1 and len(row["losses"]) == 2  # step 1 is the warm-up
        assert 0 < row["trained_tokens"] < row["processed_tokens"]  # prompts are not trained
        assert row["tokens_per_s"] == pytest.approx(row["trained_tokens"] / row["wall_s"])
        assert row["peak_rss_bytes"] > 100 * 2**20
        # A near-untrained 512-token model: eval loss close to ln(512) = 6.24.
        assert abs(row["eval_loss"] - math.log(512)) < 0.5
    # Both pad each micro-batch to its longest record (length grouping is off by default).
    assert ours["padded_tokens"] >= 0 and trl["padded_tokens"] >= 0
    assert ours["cpu_kernels"] == native.described() and "cpu_kernels" not in trl
    lines = final_lines(summarize(rows))
    parsed = parse_final_lines("\n".join(lines))
    assert parsed["speedup_vs_trl_default"] == pytest.approx(
        ours["tokens_per_s"] / trl["tokens_per_s"], rel=2e-3, abs=1e-3
    )
    assert math.isnan(parsed["speedup_vs_trl_tuned"])  # not run here


def test_a_tiny_run_reports_both_limits(tiny_llama_dir, tmp_path):
    from rich.console import Console

    from tunesmith.bench.train import bench_train
    from tunesmith.bench.train.summary import results_table

    settings = BenchSettings(
        model=str(tiny_llama_dir), steps=2, n_train=60, n_eval=16, eval_limit=8, seq_len=256
    )
    report = bench_train(settings, variants=("tunesmith",), workdir=tmp_path)
    (row,) = report["rows"]
    assert row["shape_limit_s"] > 0 and row["shape_limit_gflop"] > 0
    # The GEMMs alone take part of the step: the rest is elementwise work and overhead.
    assert 0 < row["shape_limit_ratio"] < 1
    assert row["shape_limit_ratio"] == pytest.approx(row["shape_limit_s"] / row["wall_s"])
    assert report["summary"]["shape_limit_ratio"] == row["shape_limit_ratio"]
    # In the step's order the same GEMMs take part of the step too.
    assert 0 < row["order_limit_ratio"] < 1
    assert row["order_limit_ratio"] == pytest.approx(row["order_limit_s"] / row["wall_s"])
    assert report["summary"]["ceiling_ratio"] == row["ceiling_ratio"] > 0
    console = Console(width=200, record=True)
    console.print(results_table(report))
    text = console.export_text()
    assert "of limit" in text and "of ceiling" in text and "of in order" in text


def test_a_peer_child_waits_as_torch_does_unless_the_user_chose():
    from tunesmith import cpu_share
    from tunesmith.bench.train.runner import child_env

    ours = {"GOMP_SPINCOUNT": "10000", cpu_share.AUTO_MARK: "1", "PATH": "/bin"}
    peer = child_env("trl-default", ours)
    assert peer["GOMP_SPINCOUNT"] == "300000" and cpu_share.AUTO_MARK not in peer
    assert peer["HF_HUB_OFFLINE"] == "1" and peer["PATH"] == "/bin"
    assert child_env("trl-tuned", {})["GOMP_SPINCOUNT"] == "300000"
    # tunesmith's child decides again (its __main__ configures the watched training's spin)
    assert child_env("tunesmith", ours)[cpu_share.AUTO_MARK] == "1"
    users = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert child_env("trl-default", users)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "GOMP_SPINCOUNT" not in child_env("trl-default", users)


def test_the_tunesmith_child_waits_as_tunesmith_train_does():
    from tunesmith import cpu_share

    code = (
        "import os, runpy, sys; sys.argv = ['x']\n"
        "try:\n    runpy.run_module('tunesmith.bench.train', run_name='__main__')\n"
        "except BaseException:\n    pass\n"
        "print(os.environ['GOMP_SPINCOUNT'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in cpu_share.USER_SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, cpu_share.AUTO_MARK: "1"},
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == str(cpu_share.SPIN_WATCHED)


def test_the_machine_line_names_the_kernels_and_the_rounds_that_ran_without_them():
    on, off = "on, AMX tiles", "off (not built on this machine yet)"
    peer = {"variant": "trl-default", "rep": 0, "omp_wait": "libgomp default"}
    ours = [{"variant": "tunesmith", "rep": r, "omp_wait": "x", "cpu_kernels": on} for r in (0, 1)]
    assert machine_of([*ours, peer])["cpu_kernels"] == on
    assert "tunesmith's CPU kernels on, AMX tiles" in one_line(machine_of([*ours, peer]))
    mixed = [ours[0], {**ours[1], "cpu_kernels": off}, {**ours[1], "rep": 2, "cpu_kernels": off}]
    assert machine_of(mixed)["cpu_kernels"] == f"{on} (rounds 0) / {off} (rounds 1, 2)"
    assert "cpu_kernels" not in machine_of([peer])


def test_the_machine_line_names_the_kernel_paths_the_measured_calls_took():
    paths = "lora-backward: 3 tiles, 1 dots; lora-forward: 4 dots"
    peer = {"variant": "trl-default", "rep": 0, "omp_wait": "libgomp default"}
    ours = [
        {"variant": "tunesmith", "rep": r, "omp_wait": "x", "kernel_paths": paths} for r in (0, 1)
    ]
    assert machine_of([*ours, peer])["kernel_paths"] == paths
    assert f"| measured kernel paths: {paths}" in one_line(machine_of([*ours, peer]))
    assert "measured kernel paths" not in one_line(machine_of([peer]))


@pytest.mark.parametrize("adapter", ["qv", "all", "dora"])
def test_the_adapter_is_the_same_on_both_sides(tiny_llama_dir, tmp_path, adapter):
    """``--adapter``: tunesmith's loop and TRL's ``peft_config`` train the same adapter."""
    from tunesmith.bench.train import trl_peer
    from tunesmith.bench.train.measure import ADAPTERS
    from tunesmith.bench.train.tunesmith_side import prepare_loop
    from tunesmith.methods.targets import resolve_targets

    settings = BenchSettings(
        model=str(tiny_llama_dir), steps=2, n_train=60, n_eval=16, eval_limit=8, adapter=adapter
    )
    data = prepare_data(tmp_path / "data", settings)
    ours = prepare_loop(settings, data["train_messages"], tmp_path, torch.device("cpu"))
    theirs = trl_peer.lora_config(ADAPTERS[adapter], ours.model.config)
    cfg = ours.model.peft_config["default"]
    want = resolve_targets(ADAPTERS[adapter]["target"], ours.model.config)
    for got in (cfg, theirs):
        assert set(got.target_modules) == set(want)
        assert (got.r, got.lora_alpha, got.lora_dropout) == (
            ADAPTERS[adapter]["rank"],
            ADAPTERS[adapter]["alpha"],
            ADAPTERS[adapter]["dropout"],
        )
        assert got.use_dora == (adapter == "dora")
