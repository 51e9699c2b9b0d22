"""Launchers and checks shared by the 2-rank tests (DDP, FSDP, DeepSpeed) on this CPU (gloo).

Every run is the real CLI on the tiny Llama: one process at ``--batch-size 8`` is the reference
for 2 ranks at ``--batch-size 4`` (fp32, dropout 0, same seed).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RTOL = 1e-4
COMMON = [
    "--max-steps", "4", "--logging-steps", "1", "--precision", "fp32", "--dropout", "0",
    "--lr-scheduler", "cosine", "--warmup-ratio", "0.25", "--skip-base-eval",
    "--eval-limit", "4", "--max-new-tokens", "4", "--threads", "1", "--seed", "3",
]  # fmt: skip
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "distributed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out.pop("WORLD_SIZE", None)
    return out


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def torchrun(args: list[str]) -> None:
    run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(free_port()), "-m", "tunesmith", "train", *args])  # fmt: skip


def accelerate_launch(launcher: list[str], args: list[str]) -> None:
    """``accelerate launch`` on 2 processes with ``launcher`` options (e.g. ``--use_fsdp``)."""
    run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *launcher,
         "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "tunesmith", "train", *args])  # fmt: skip


def nproc2(args: list[str]) -> None:
    run([sys.executable, "-m", "tunesmith", "train", "--nproc", "2", *args])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in rows(run_dir) if "loss" in r]


def assert_same_losses(run_dir: Path, reference: Path) -> None:
    """Per-step losses (one row per step: rank 0 alone wrote) and epochs equal the reference."""
    assert [r["step"] for r in rows(run_dir) if "loss" in r] == [1, 2, 3, 4]
    assert losses(run_dir) == pytest.approx(losses(reference), rel=RTOL)
    assert rows(run_dir)[0]["epoch"] == rows(reference)[0]["epoch"]


def _logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def assert_same_adapter_logits(run_dir: Path, reference: Path, base_dir: Path) -> None:
    """``adapter/`` of both runs, loaded on the base with peft, gives the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokens = torch.arange(3, 40).reshape(1, -1)
    logits = []
    for d in (reference, run_dir):
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        logits.append(_logits(PeftModel.from_pretrained(base, d / "adapter").eval(), tokens))
    torch.testing.assert_close(logits[1], logits[0], rtol=RTOL, atol=1e-5)


def assert_same_model_logits(run_dir: Path, reference: Path) -> None:
    """``model/`` of both runs (full fine-tuning) gives the same logits."""
    from transformers import AutoModelForCausalLM

    tokens = torch.arange(3, 40).reshape(1, -1)
    logits = [
        _logits(AutoModelForCausalLM.from_pretrained(d / "model").eval(), tokens)
        for d in (reference, run_dir)
    ]
    torch.testing.assert_close(logits[1], logits[0], rtol=RTOL, atol=1e-5)


def assert_resume_equals_uninterrupted(run_dir: Path, scratch: Path) -> None:
    """Resume a copy of ``run_dir`` from its step-2 checkpoint: same losses, same adapter."""
    from safetensors.torch import load_file

    resumed = scratch / "resumed"
    shutil.copytree(run_dir, resumed)
    for name in ("adapter", "eval.json", "report.html"):
        p = resumed / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert [c.name for c in (resumed / "checkpoints").iterdir()] == ["step-2"]
    run([sys.executable, "-m", "tunesmith", "train", "--resume", str(resumed)])
    assert losses(resumed) == pytest.approx(losses(run_dir), rel=RTOL)
    assert [r["step"] for r in rows(resumed) if "loss" in r] == [1, 2, 3, 4]
    got = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    want = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=RTOL, atol=1e-6)
