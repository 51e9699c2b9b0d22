"""Per-rank memory under DDP / ZeRO / FSDP: the arithmetic of plan/sharding.py."""

import pytest

from tunesmith.errors import ConfigError
from tunesmith.plan import plan
from tunesmith.plan.sharding import gathered_bytes, shard_terms
from tunesmith.shape import ModelShape

SHAPE = ModelShape(
    model_type="llama", hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2,
    head_dim=16, vocab=100, tied=False, block_linears={}, block_params=1084, block_tensors=9,
    final_norm_params=64, final_norm_tensors=1, linear_params=4000, embed_params=500,
    lm_head_params=500, other_params=400, tensors=39,
)  # fmt: skip
TERMS = {"weights": 5400 * 2, "trainable": 800, "gradients": 1200, "optimizer": 1600}


def test_ddp_and_one_process_divide_nothing():
    assert shard_terms(TERMS, SHAPE, 8, "ddp") == TERMS
    assert shard_terms(TERMS, SHAPE, 1, "fsdp") == TERMS


def test_zero_stages_divide_optimizer_then_gradients():
    z1 = shard_terms(TERMS, SHAPE, 4, "zero1")
    assert z1 == {**TERMS, "optimizer": 400}
    z2 = shard_terms(TERMS, SHAPE, 4, "zero2")
    assert z2 == {**TERMS, "optimizer": 400, "gradients": 300}


def test_full_sharding_divides_weights_and_adds_root_plus_two_layers_gathered():
    # 2 bytes per parameter; root = 500 + 500 params, one layer = (4000 + 400) / 4 = 1100.
    assert gathered_bytes(SHAPE, TERMS["weights"]) == 2 * (1000 + 2 * 1100)
    for mode in ("fsdp", "zero3"):
        out = shard_terms(TERMS, SHAPE, 4, mode)
        assert out["weights"] == 10800 // 4 + 6400 and out["gathered_params"] == 6400
        assert (out["trainable"], out["gradients"], out["optimizer"]) == (200, 300, 400)


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError):
        shard_terms(TERMS, SHAPE, 0, "fsdp")
    with pytest.raises(ConfigError):
        shard_terms(TERMS, SHAPE, 2, "horovod")


def test_plan_is_per_rank_and_says_so():
    one = plan("llama-2-13b", "full", gpu="a100-80gb", batch_size=1, seq_len=512)
    eight = plan(
        "llama-2-13b", "full", gpu="a100-80gb", batch_size=1, seq_len=512, nproc=8,
        sharding="fsdp",
    )  # fmt: skip
    assert eight.breakdown["optimizer"] == pytest.approx(one.breakdown["optimizer"] / 8, abs=1)
    assert eight.breakdown["weights"] < one.breakdown["weights"] / 2
    assert eight.breakdown["activations"] == one.breakdown["activations"]
    assert eight.total_bytes < one.total_bytes and one.verdict == "does-not-fit"
    assert eight.to_json()["distributed"] == {"nproc": 8, "sharding": "fsdp"}
    assert "distributed" not in one.to_json()
    assert eight.to_record()["inputs"]["nproc"] == 8


def test_plan_cli_takes_nproc_and_distributed(capsys):
    import json

    from tunesmith.cli import main

    args = ["plan", "--model", "llama-2-13b", "--method", "full", "--gpu", "a100-80gb"]
    assert main([*args, "--nproc", "8", "--distributed", "fsdp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["distributed"]["sharding"] == "fsdp"
    assert main([*args, "--nproc", "4", "--distributed", "zero2"]) == 0
    assert "per process of 4 (zero2)" in " ".join(capsys.readouterr().out.split())
