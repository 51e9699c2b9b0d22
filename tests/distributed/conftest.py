"""The one-process reference runs every 2-rank test compares against (made once per worker)."""

import pytest

from tests.distributed.helpers import COMMON
from tunesmith.cli import main


@pytest.fixture(scope="session")
def train_args(tiny_llama_dir, small_demo_data) -> dict[str, list[str]]:
    """CLI arguments of the LoRA and the full fine-tuning runs (without batch size / output)."""
    train, evals = small_demo_data
    data = ["--model", str(tiny_llama_dir), "--data", str(train), "--eval-data", str(evals)]
    return {
        "lora": [*data, *COMMON, "--target", "all-linear", "--lr", "5e-3"],
        "full": [*data, *COMMON, "--method", "full", "--lr", "1e-3"],
    }


@pytest.fixture(scope="session")
def reference_runs(train_args, tmp_path_factory):
    """One process at ``--batch-size 8``: ``single`` (LoRA) and ``single_full``."""
    root = tmp_path_factory.mktemp("one-process")
    out = {"single": root / "single", "single_full": root / "single_full"}
    for name, kind in (("single", "lora"), ("single_full", "full")):
        args = [*train_args[kind], "--batch-size", "8", "--output", str(out[name])]
        assert main(["train", *args]) == 0
    return out
