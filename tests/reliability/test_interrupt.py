"""Interruptions and damaged checkpoints never cost finished work.

The kill test runs the real CLI in subprocesses: SIGTERM mid-run must save a checkpoint at the
next step boundary and exit; ``--resume`` must then reproduce the uninterrupted run exactly
(per-step losses and the final adapter tensors), dropout included, since the RNG state is
restored. The corrupt-checkpoint test truncates the newest checkpoint and shows ``--resume``
falls back to the one before it, with a message, and still ends where an intact run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.reliability.conftest import make_loop
from tunesmith.cli import main
from tunesmith.report.metrics import read_metrics
from tunesmith.train.checkpoint import list_checkpoints, verify_checkpoint

pytestmark = pytest.mark.xdist_group("tiny-e2e")


def _train_args(model: Path, data: Path, out: Path, steps: int, save_steps: int) -> list[str]:
    return [
        "train", "--model", str(model), "--data", str(data), "--output", str(out),
        "--max-steps", str(steps), "--save-steps", str(save_steps), "--logging-steps", "1",
        "--batch-size", "4", "--lr", "5e-3", "--dropout", "0.1", "--seed", "7",
        "--eval-limit", "2", "--max-new-tokens", "2", "--skip-base-eval",
    ]  # fmt: skip


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted_run(tiny_llama_dir, qa_file, tmp_path):
    steps = 120  # long enough that SIGTERM always lands mid-run, even on a loaded machine
    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = _cli(_train_args(tiny_llama_dir, qa_file, full, steps, 25), tmp_path)
    victim = _cli(_train_args(tiny_llama_dir, qa_file, cut, steps, 25), tmp_path)

    deadline = time.monotonic() + 240
    while len(_losses(cut)) < 30:  # well into training, past a periodic checkpoint
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=120)

    assert victim.returncode == 130, err
    assert "stopped at step" in err and "--resume" in err and "Traceback" not in err
    stopped = max(_losses(cut))
    assert 30 <= stopped < steps
    newest = list_checkpoints(cut / "checkpoints")[-1]
    assert newest.name == f"step-{stopped}" and verify_checkpoint(newest)
    assert not (cut / "adapter").exists()

    resumed = _cli(["train", "--resume", str(cut)], tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err

    # The same per-step losses, 1..steps, and bit-identical adapter tensors.
    assert list(_losses(cut)) == list(range(1, steps + 1))
    assert _losses(cut) == _losses(full)
    a, b = _adapter(cut), _adapter(full)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_corrupt_latest_checkpoint_falls_back_to_previous(
    tiny_llama_dir, qa_file, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(_train_args(tiny_llama_dir, qa_file, run, 9, 3)) == 0
    reference_losses, reference_adapter = _losses(run), _adapter(run)
    # The state a crash after step 8 leaves: checkpoints step-3 and step-6 (keep=2), no
    # adapter; then the newest checkpoint's weights are cut short.
    shutil.rmtree(run / "adapter")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-3", "step-6"]
    weights = run / "checkpoints" / "step-6" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()

    assert main(["train", "--resume", str(run)]) == 0

    said = capsys.readouterr()
    assert "checkpoint step-6 is corrupt or partial; skipping it" in said.out + said.err
    # Resumed from step 3: steps 4..9 are recomputed and match the intact run.
    assert list(_losses(run)) == list(range(1, 10))
    for step, loss in reference_losses.items():
        assert _losses(run)[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    for k, v in _adapter(run).items():
        torch.testing.assert_close(v, reference_adapter[k], rtol=1e-5, atol=1e-6)
    state = json.loads((list_checkpoints(run / "checkpoints")[0] / "state.json").read_text())
    assert state["step"] == 3


# -- in-process signal handling of the loop (fast) -------------------------------------------
def _signal_at(step: int, *signals: int):
    def progress(done, loss):
        if done == step:
            for sig in signals:
                os.kill(os.getpid(), sig)

    return progress


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_at_the_step_boundary_and_restores_handlers(sig, tmp_path):
    from tunesmith.train.loop import Interrupted

    before = signal.getsignal(sig)
    loop = make_loop(tmp_path)
    with pytest.raises(Interrupted, match=r"stopped at step 2; checkpoint saved.*--resume"):
        loop.train(progress=_signal_at(2, sig))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-2"]
    assert json.loads((tmp_path / "checkpoints/step-2/state.json").read_text())["step"] == 2
    assert signal.getsignal(sig) is before


def test_second_ctrl_c_quits_at_once_and_keeps_the_last_checkpoint(tmp_path):
    loop = make_loop(tmp_path, save_steps=1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(progress=_signal_at(3, signal.SIGINT, signal.SIGINT))
    # Step 3's save never ran; steps 1-2 were saved (keep=2) and are intact.
    saved = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in saved] == ["step-1", "step-2"]
    assert all(verify_checkpoint(p) for p in saved)
