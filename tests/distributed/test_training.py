"""2 ranks on this CPU (gloo), tiny Llama: DDP and FSDP match one process at the same global batch.

Each run is the real CLI: DDP through plain ``torchrun -m tunesmith train``, FSDP with LoRA
through ``tunesmith train --nproc 2`` (which re-launches itself through torchrun), full FSDP
through ``accelerate launch --use_fsdp -m tunesmith train``. One process at
``--batch-size 8`` is the reference for 2 ranks at ``--batch-size 4`` (fp32, dropout 0, same
seed): the per-step losses agree to rtol 1e-4 (they are in fact equal to the printed digits
here), and the saved adapter / model gives the same logits.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.helpers import (
    accelerate_launch,
    assert_resume_equals_uninterrupted,
    assert_same_adapter_logits,
    assert_same_losses,
    assert_same_model_logits,
    env,
    free_port,
    nproc2,
    rows,
    torchrun,
)

pytestmark = pytest.mark.xdist_group("distributed")


@pytest.fixture(scope="module")
def runs(reference_runs, train_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    lora, full = train_args["lora"], train_args["full"]
    out = {name: root / name for name in ("ddp", "fsdp", "fsdp_full")}
    torchrun([*lora, "--batch-size", "4", "--output", str(out["ddp"])])
    nproc2([*lora, "--batch-size", "4", "--distributed", "fsdp", "--save-steps", "2",
            "--output", str(out["fsdp"])])  # fmt: skip
    # accelerate launch with an FSDP launcher config: --distributed auto picks fsdp.
    accelerate_launch(
        ["--use_fsdp"], [*full, "--batch-size", "4", "--output", str(out["fsdp_full"])]
    )
    return {**reference_runs, **out}


@pytest.mark.parametrize("name,reference", [("ddp", "single"), ("fsdp", "single"),
                                            ("fsdp_full", "single_full")])  # fmt: skip
def test_loss_curve_matches_one_process_at_the_same_global_batch(runs, name, reference):
    assert_same_losses(runs[name], runs[reference])


def test_only_rank_0_wrote_the_run_directory(runs):
    for name in ("ddp", "fsdp", "fsdp_full"):
        metrics = rows(runs[name])
        assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4]  # no duplicate rows
        assert sum("eval_loss" in r for r in metrics) == 1
        for f in ("config.yaml", "plan.json", "eval.json", "report.html", "data/train.jsonl"):
            assert (runs[name] / f).is_file(), (name, f)
    assert "nproc: 2" in (runs["fsdp"] / "config.yaml").read_text()
    full_plan = json.loads((runs["fsdp_full"] / "plan.json").read_text())
    assert full_plan["inputs"]["sharding"] == "fsdp"
    plan = json.loads((runs["fsdp"] / "plan.json").read_text())
    assert (plan["inputs"]["nproc"], plan["inputs"]["sharding"]) == (2, "fsdp")
    step2 = runs["fsdp"] / "checkpoints" / "step-2"
    assert {"rng.pt", "rng-rank1.pt", "trainable.safetensors", "manifest.json"} <= {
        p.name for p in step2.iterdir()
    }


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_adapter_saved_by_rank_0_reloads_to_the_same_logits(runs, name, tiny_llama_dir):
    assert_same_adapter_logits(runs[name], runs["single"], tiny_llama_dir)


def test_full_model_saved_under_fsdp_reloads_to_the_same_logits(runs):
    assert_same_model_logits(runs["fsdp_full"], runs["single_full"])


def test_resume_under_fsdp_equals_the_uninterrupted_run(runs, tmp_path):
    # The FSDP run checkpointed at step 2: drop what came after and resume from there.
    assert_resume_equals_uninterrupted(runs["fsdp"], tmp_path)


def test_resume_on_another_world_size_is_refused(runs, tmp_path):
    from tunesmith.errors import UserInputError
    from tunesmith.rundir import RunDir
    from tunesmith.train.run import run_training

    with pytest.raises(UserInputError, match="--nproc 2"):
        run_training(RunDir(runs["fsdp"]).config, resume=runs["fsdp"], say=lambda m: None)


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a child of its agent process)."""
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the rank's pid in /proc")
def test_sigterm_to_one_rank_stops_all_ranks_at_the_same_checkpointed_step(
    tiny_llama_dir, small_demo_data, tmp_path
):
    import signal
    import time

    train, evals = small_demo_data
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "tunesmith", "train",
           "--model", str(tiny_llama_dir), "--data", str(train), "--eval-data", str(evals),
           "--max-steps", "100000", "--logging-steps", "1", "--skip-base-eval", "--threads", "1",
           "--batch-size", "2", "--distributed", "fsdp", "--output", str(out)]  # fmt: skip
    # A session of its own: on failure the whole group (launcher and ranks) is killed, so reading
    # the log cannot wait forever on a pipe an orphaned rank still holds.
    proc = subprocess.Popen(
        cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline, metrics = time.time() + 300, out / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None and proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(pid, signal.SIGTERM)  # one rank only: the flag is all-reduced
        try:
            log = proc.communicate(timeout=300)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # still running 300 s after the signal
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            pytest.fail(
                f"ranks still running 300 s after SIGTERM; {len(lines)} metrics rows; log tail:\n"
                + proc.communicate()[0].decode()[-3000:]
            )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "checkpoint saved" in log, log[-3000:]
    from tunesmith.train.checkpoint import latest_valid_checkpoint

    ckpt, _ = latest_valid_checkpoint(out / "checkpoints")
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert ckpt is not None and ckpt.name == f"step-{steps[-1]}"
    assert steps == list(range(1, steps[-1] + 1))
    assert (ckpt / "rng-rank1.pt").is_file()
