"""bench latency on the tiny model: every variant is timed or skipped with a reason."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.bench.latency import VARIANTS, _variant, bench_latency, interleaved_medians
from tunesmith.cli import build_parser, main
from tunesmith.errors import ConfigError
from tunesmith.methods import MethodArgs


def test_interleaved_medians_ignore_warmup_and_outliers():
    calls = []
    slow = {("a", 0), ("a", 2), ("b", 0)}  # warm-up round of both, and one timed call of "a"

    def make(name):
        def fn():
            if (name, len([c for c in calls if c == name])) in slow:
                time.sleep(0.05)
            calls.append(name)

        return fn

    medians = interleaved_medians({"a": make("a"), "b": make("b")}, runs=4, warmup=1)
    assert medians["a"] < 0.01 and medians["b"] < 0.01
    assert calls == ["a", "b"] * 5  # round-robin: warm-up round, then 4 timed rounds


def test_report_covers_every_variant(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    report = bench_latency(
        str(tiny_llama_dir), VARIANTS, runs=2, warmup=1, seq_len=16, new_tokens=4, loaded=model
    )
    timed = [r.method for r in report.rows]
    skipped = [s["method"] for s in report.skipped]
    assert timed[:3] == ["base", "lora", "lora-merged"]
    assert sorted(timed + skipped) == sorted(VARIANTS)
    assert all(s["reason"] for s in report.skipped)
    base = report.rows[0]
    assert base.forward_ratio == 1.0 and base.generate_ratio == 1.0
    assert all(r.forward_s > 0 and r.generate_s > 0 for r in report.rows)
    assert all(r.forward_ratio == pytest.approx(r.forward_s / base.forward_s) for r in report.rows)


def test_merged_lora_is_the_plain_base_architecture(tiny_llama_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    merged = _variant(base, "lora-merged", MethodArgs(rank=4, dropout=0.0))
    assert type(merged) is type(base)
    assert {n for n, _ in merged.named_modules()} == {n for n, _ in base.named_modules()}
    # B starts at zero, so the merged weights equal the base's: the base is untouched by copying.
    for (n, p), (_, q) in zip(merged.named_parameters(), base.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_unknown_method_is_a_config_error(tiny_llama_dir):
    with pytest.raises(ConfigError, match="methods"):
        bench_latency(str(tiny_llama_dir), ("base", "loraa"), loaded=object())


def test_cli_json(tiny_qwen2_dir, capsys):
    argv = ["bench", "latency", "--model", str(tiny_qwen2_dir), "--methods", "base,lora-merged"]
    code = main(
        [
            *argv,
            "--runs",
            "2",
            "--warmup",
            "0",
            "--seq-len",
            "8",
            "--new-tokens",
            "2",
            "--threads",
            "1",
            "--json",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in payload["rows"]] == ["base", "lora-merged"]
    assert payload["runs"] == 2 and payload["threads"] == 1


def test_train_offered_only_when_its_module_exists():
    parser = build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    offered = set(bench._subparsers._group_actions[0].choices)
    assert "latency" in offered
    assert ("train" in offered) == (importlib.util.find_spec("tunesmith.bench.train") is not None)
