"""The base evaluation cache: what its key depends on, and a second identical run reusing it."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import make_config
from tunesmith.data.records import Conversation, Turn
from tunesmith.eval import base_cache


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv(base_cache.ENV, "1")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "base-evals"


def _evals(answer="SELECT 1"):
    return [Conversation((Turn("user", "How many?"), Turn("assistant", answer)), meta={"db": 1})]


def test_the_key_follows_what_the_base_scores_depend_on(cache_on, tiny_llama_dir):
    cfg = make_config({"model": str(tiny_llama_dir), "max-new-tokens": 8})
    k = base_cache.key(cfg, _evals(), "cpu")
    assert k and k == base_cache.key(cfg, _evals(), "cpu")
    # training-only settings do not change the base's scores
    for change in ({"lr": 1e-3}, {"rank": 16, "recipe": "seed"}, {"max-steps": 7}, {"seed": 1}):
        other = make_config({"model": str(tiny_llama_dir), "max-new-tokens": 8, **change})
        assert base_cache.key(other, _evals(), "cpu") == k, change
    # the questions, generation settings, method (QLoRA scores a 4-bit base), device do
    assert base_cache.key(cfg, _evals("SELECT 2"), "cpu") != k
    for change in ({"max-new-tokens": 9}, {"method": "qlora"}, {"precision": "fp32"}):
        other = make_config({"model": str(tiny_llama_dir), "max-new-tokens": 8, **change})
        assert base_cache.key(other, _evals(), "cpu") != k, change
    assert base_cache.key(cfg, _evals(), "meta") != k
    # so do the model's files: a re-saved checkpoint is another model
    (tiny_llama_dir / "config.json").touch()
    assert base_cache.key(cfg, _evals(), "cpu") != k


def test_no_key_where_the_base_cannot_be_pinned_down(cache_on, tiny_llama_dir, monkeypatch):
    dpo = make_config({"model": str(tiny_llama_dir), "objective": "dpo"})
    assert base_cache.key(dpo, _evals(), "cpu") is None  # preference runs add reference metrics
    hub = make_config({"model": "someone/not-downloaded"})
    assert base_cache.key(hub, _evals(), "cpu") is None  # not on this disk: nothing to pin
    monkeypatch.setenv(base_cache.ENV, "0")
    assert base_cache.key(make_config({"model": str(tiny_llama_dir)}), _evals(), "cpu") is None


def test_store_load_and_a_broken_entry(cache_on):
    data = {"metrics": {"exact_match": 0.5}, "generations": ["a", "b"]}
    base_cache.store("k1", data)
    assert base_cache.load("k1") == data
    (cache_on / "k2.json").write_text("{not json")
    assert base_cache.load("k2") is None and base_cache.load("missing") is None
    assert base_cache.load(None) is None


def test_old_entries_are_pruned(cache_on, monkeypatch):
    monkeypatch.setattr(base_cache, "KEEP", 2)
    for i in range(4):
        base_cache.store(f"k{i}", {"metrics": {}, "generations": []})
    assert len(list(cache_on.glob("*.json"))) == 2


def test_a_second_identical_run_reads_the_base_evaluation_back(
    cache_on, tiny_llama_dir, small_demo_data, tmp_path, capfd
):
    """Two real trainings of a tiny Llama; the second differs only in its learning rate."""
    from tunesmith.cli import main

    train, evals = small_demo_data
    argv = [
        "train", "--model", str(tiny_llama_dir), "--data", str(train), "--eval-data", str(evals),
        "--max-steps", "2", "--batch-size", "4", "--max-new-tokens", "6", "--eval-limit", "4",
    ]  # fmt: skip
    assert main([*argv, "--output", str(tmp_path / "a"), "--lr", "1e-3"]) == 0
    first = capfd.readouterr().out
    assert main([*argv, "--output", str(tmp_path / "b"), "--lr", "2e-3"]) == 0
    second = capfd.readouterr().out
    assert "from the cache" not in first and "from the cache" in second
    a, b = (json.loads((tmp_path / r / "eval_base.json").read_text()) for r in "ab")
    assert a == b and len(list(cache_on.glob("*.json"))) == 1
    # the tuned side is scored against it as usual
    report = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert report["metrics"]["base"] == a["metrics"] and "adapted" in report["metrics"]
