"""--nproc re-launch, engine checks and the new config fields (no process group needed)."""

import sys

import pytest

from tunesmith.config import make_config
from tunesmith.distributed import DistContext, setup, world_size_from_env
from tunesmith.distributed.context import check_engine, resolve_mode
from tunesmith.distributed.launch import relaunch, torchrun_command
from tunesmith.errors import UserInputError


def test_torchrun_command_runs_this_python_on_n_ranks():
    cmd = torchrun_command(4, ["cfg.yaml", "--json"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[-5:] == ["-m", "tunesmith", "train", "cfg.yaml", "--json"]


def test_no_relaunch_for_one_process_or_under_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert relaunch(make_config({"nproc": 1})) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert world_size_from_env() == 2
    assert relaunch(make_config({"nproc": 2})) is None  # already launched


def test_modes(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert resolve_mode("auto", 1) == "none" and resolve_mode("fsdp", 1) == "none"
    assert resolve_mode("auto", 2) == "ddp" and resolve_mode("fsdp", 2) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch with an FSDP config
    assert resolve_mode("auto", 2) == "fsdp" and resolve_mode("ddp", 2) == "ddp"


def test_single_process_context_is_inactive(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup("fsdp")
    assert ctx == DistContext() and not ctx.active and ctx.is_main
    assert ctx.sum(1.5, 2.0) == [1.5, 2.0] and ctx.any(False) is False
    assert ctx.broadcast("x") == "x" and ctx.gather(3) == [3] and ctx.max(2.5) == 2.5
    with ctx.main_first():
        ctx.barrier()


def test_deepspeed_missing_is_a_user_error():
    pytest.importorskip("accelerate")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(UserInputError, match="pip install deepspeed") as err:
            check_engine("deepspeed", None)
        assert err.value.exit_code == 2
    with pytest.raises(UserInputError, match="not found"):
        check_engine("fsdp", "/nonexistent/accelerate.yaml")


def test_config_fields_and_help(capsys):
    from tunesmith.cli import main

    cfg = make_config({"nproc": 2, "distributed": "fsdp", "distributed-config": "x.yaml"})
    assert (cfg.nproc, cfg.distributed, cfg.distributed_config) == (2, "fsdp", "x.yaml")
    with pytest.raises(Exception, match="distributed"):
        make_config({"distributed": "horovod"})
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--nproc" in text and "--distributed" in text and "--distributed-config" in text


def test_plan_sharding_follows_the_engine(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    deepspeed = DistContext(mode="deepspeed", world_size=2, distributed_config=str(ds))
    assert deepspeed.plan_sharding == "zero2"
    assert DistContext(mode="fsdp", world_size=2).plan_sharding == "fsdp"
    assert DistContext(mode="ddp", world_size=2).plan_sharding == "ddp"
    ds.write_text("[1]")
    with pytest.raises(UserInputError):
        _ = deepspeed.plan_sharding


def test_library_call_with_nproc_needs_a_launcher(monkeypatch):
    from tunesmith.train.run import run_training

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserInputError, match="needs a launcher"):
        run_training(make_config({"nproc": 2}), say=lambda m: None)
