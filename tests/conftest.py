"""Shared test fixtures: tiny real models and tokenizers built from configs, no hub access."""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# `pytest -n 2` runs two torch processes on two cores (and their CLI subprocesses): the
# shared-cores wait setting, before torch loads (see tunesmith.cpu_share).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# Training tests keep the thread count they start with: the other worker would otherwise take
# a core from every run, and a run's last bits follow its thread count (tests that compare two
# runs bit for bit). tests/test_core_watch.py turns it on.
os.environ["TUNESMITH_CORE_WATCH"] = "0"
# Each test scores its own base model: a base evaluation read back from another test's run would
# make results depend on test order (tests/eval/test_base_cache.py turns the cache on).
os.environ["TUNESMITH_BASE_EVAL_CACHE"] = "0"
# The tests keep a tunesmith cache of their own, kept between test runs (the embedded model's
# conversion is reused), never the user's: row-split timings taken while two test workers share
# the cores would steer the user's later runs, and test crash logs and GGUF conversions of test
# models do not belong there.
os.environ["TUNESMITH_CACHE"] = str(
    Path(tempfile.gettempdir()) / f"tunesmith-tests-{getpass.getuser()}"
)

import pytest  # noqa: E402

from tests.tiny import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, hidden-64 Llama with a ChatML tokenizer, saved as a local checkpoint."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """A 2-layer, hidden-64 Qwen2 with a ChatML tokenizer, saved as a local checkpoint."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def small_demo_data(tmp_path_factory):
    """(train.jsonl, eval.jsonl): 48 + 8 clinic demo records, for fast end-to-end runs."""
    from tunesmith.atomic import write_jsonl
    from tunesmith.demo.dataset import demo_splits

    train, evals = demo_splits(seed=0, n_train=48, n_eval=8)
    d = tmp_path_factory.mktemp("small-demo")
    return (
        write_jsonl(d / "train.jsonl", (c.to_json() for c in train)),
        write_jsonl(d / "eval.jsonl", (c.to_json() for c in evals)),
    )


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need a CUDA device: skipped where none is present."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on a GPU)")
    for item in gpu_items:
        item.add_marker(skip)
