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
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("distributed")

RTOL = 1e-4
COMMON = [
    "--max-steps", "4", "--logging-steps", "1", "--precision", "fp32", "--dropout", "0",
    "--lr-scheduler", "cosine", "--warmup-ratio", "0.25", "--skip-base-eval",
    "--eval-limit", "4", "--max-new-tokens", "4", "--threads", "1", "--seed", "3",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _torchrun(args: list[str]) -> None:
    port = str(_free_port())
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
          "--master-port", port, "-m", "tunesmith", "train", *args])  # fmt: skip


def _accelerate_fsdp(args: list[str]) -> None:
    # accelerate launch with an FSDP launcher config: --distributed auto picks fsdp.
    _run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--use_fsdp",
          "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
          "-m", "tunesmith", "train", *args])  # fmt: skip


def _nproc2(args: list[str]) -> None:
    _run([sys.executable, "-m", "tunesmith", "train", "--nproc", "2", *args])


def _rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in _rows(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, small_demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    train, evals = small_demo_data
    data = ["--model", str(tiny_llama_dir), "--data", str(train), "--eval-data", str(evals)]
    lora = [*data, *COMMON, "--target", "all-linear", "--lr", "5e-3"]
    full = [*data, *COMMON, "--method", "full", "--lr", "1e-3"]
    out = {name: root / name for name in ("single", "ddp", "fsdp", "single_full", "fsdp_full")}
    assert main(["train", *lora, "--batch-size", "8", "--output", str(out["single"])]) == 0
    assert main(["train", *full, "--batch-size", "8", "--output", str(out["single_full"])]) == 0
    _torchrun([*lora, "--batch-size", "4", "--output", str(out["ddp"])])
    _nproc2([*lora, "--batch-size", "4", "--distributed", "fsdp", "--save-steps", "2",
             "--output", str(out["fsdp"])])  # fmt: skip
    _accelerate_fsdp([*full, "--batch-size", "4", "--output", str(out["fsdp_full"])])
    return out


@pytest.mark.parametrize("name,reference", [("ddp", "single"), ("fsdp", "single"),
                                            ("fsdp_full", "single_full")])  # fmt: skip
def test_loss_curve_matches_one_process_at_the_same_global_batch(runs, name, reference):
    got, want = _losses(runs[name]), _losses(runs[reference])
    assert len(got) == len(want) == 4
    assert got == pytest.approx(want, rel=RTOL)
    assert _rows(runs[name])[0]["epoch"] == _rows(runs[reference])[0]["epoch"]


def test_only_rank_0_wrote_the_run_directory(runs):
    for name in ("ddp", "fsdp", "fsdp_full"):
        rows = _rows(runs[name])
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # no duplicate rows
        assert sum("eval_loss" in r for r in rows) == 1
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


def _logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_adapter_saved_by_rank_0_reloads_to_the_same_logits(runs, name, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokens = torch.arange(3, 40).reshape(1, -1)
    logits = []
    for run in (runs["single"], runs[name]):
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        logits.append(_logits(PeftModel.from_pretrained(base, run / "adapter").eval(), tokens))
    torch.testing.assert_close(logits[1], logits[0], rtol=RTOL, atol=1e-5)


def test_full_model_saved_under_fsdp_reloads_to_the_same_logits(runs):
    from transformers import AutoModelForCausalLM

    tokens = torch.arange(3, 40).reshape(1, -1)
    logits = [
        _logits(AutoModelForCausalLM.from_pretrained(runs[n] / "model").eval(), tokens)
        for n in ("single_full", "fsdp_full")
    ]
    torch.testing.assert_close(logits[1], logits[0], rtol=RTOL, atol=1e-5)


def test_resume_under_fsdp_equals_the_uninterrupted_run(runs, tmp_path):
    # The FSDP run checkpointed at step 2: drop what came after and resume from there.
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["fsdp"], resumed)
    for name in ("adapter", "eval.json", "report.html"):
        p = resumed / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert [c.name for c in (resumed / "checkpoints").iterdir()] == ["step-2"]
    _run([sys.executable, "-m", "tunesmith", "train", "--resume", str(resumed)])
    assert _losses(resumed) == pytest.approx(_losses(runs["fsdp"]), rel=RTOL)
    assert [r["step"] for r in _rows(resumed) if "loss" in r] == [1, 2, 3, 4]
    from safetensors.torch import load_file

    got = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    want = load_file(str(runs["fsdp"] / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=RTOL, atol=1e-6)


def test_resume_on_another_world_size_is_refused(runs, tmp_path):
    from tunesmith.errors import UserInputError
    from tunesmith.train.run import load_run_config, run_training

    with pytest.raises(UserInputError, match="--nproc 2"):
        run_training(load_run_config(runs["fsdp"]), resume=runs["fsdp"], say=lambda m: None)


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
           "--master-port", str(_free_port()), "-m", "tunesmith", "train",
           "--model", str(tiny_llama_dir), "--data", str(train), "--eval-data", str(evals),
           "--max-steps", "100000", "--logging-steps", "1", "--skip-base-eval", "--threads", "1",
           "--batch-size", "2", "--distributed", "fsdp", "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None and proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(pid, signal.SIGTERM)  # one rank only: the flag is all-reduced
        log = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "checkpoint saved" in log, log[-3000:]
    from tunesmith.train.checkpoint import latest_valid_checkpoint

    ckpt, _ = latest_valid_checkpoint(out / "checkpoints")
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert ckpt is not None and ckpt.name == f"step-{steps[-1]}"
    assert steps == list(range(1, steps[-1] + 1))
    assert (ckpt / "rng-rank1.pt").is_file()
