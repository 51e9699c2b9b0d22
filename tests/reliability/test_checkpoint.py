"""Resuming from a checkpoint that does not belong to the run, or that carries code, is refused."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.reliability.conftest import make_loop
from tunesmith.errors import UserInputError
from tunesmith.methods import MethodArgs, get_method
from tunesmith.train.checkpoint import MANIFEST, latest_valid_checkpoint, load_checkpoint


def _loop(run_dir, rank=8):
    from tests.tiny import make_tiny_model

    args = MethodArgs(rank=rank, alpha=16, dropout=0.0, target=("q_proj",))
    model = get_method("lora").apply(make_tiny_model("llama"), args)
    return make_loop(run_dir, model, max_steps=4, save_steps=2)


@pytest.fixture
def saved(tmp_path):
    """A verified checkpoint at step 2 of a rank-8 LoRA run."""
    _loop(tmp_path).train(stop_after=3)
    path, skipped = latest_valid_checkpoint(tmp_path / "checkpoints")
    assert path.name == "step-2" and not skipped
    return path


def test_checkpoint_of_another_rank_is_refused_and_nothing_is_restored(saved, tmp_path):
    other = _loop(tmp_path / "other", rank=4)
    before = {n: p.detach().clone() for n, p in other.model.named_parameters()}
    with pytest.raises(UserInputError, match=r"does not match the model and method.*\(8,") as e:
        load_checkpoint(saved, other.model, other.optimizer, other.scheduler)
    assert "config.yaml" in str(e.value)
    for n, p in other.model.named_parameters():
        assert torch.equal(p, before[n]), n


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def test_pickled_code_in_a_checkpoint_is_not_executed(saved, tmp_path, capsys):
    # A tampered run directory: code in rng.pt, with a manifest recomputed to match.
    torch.save({"python": _Payload()}, saved / "rng.pt")
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["files"]["rng.pt"] = hashlib.sha256((saved / "rng.pt").read_bytes()).hexdigest()
    (saved / MANIFEST).write_text(json.dumps(manifest))
    loop = _loop(tmp_path / "again")
    with pytest.raises(UserInputError, match="cannot be restored"):
        load_checkpoint(saved, loop.model, loop.optimizer, loop.scheduler)
    assert "this ran" not in capsys.readouterr().out


def test_a_resumed_optimizer_keeps_this_processs_adamw_kernel(saved, tmp_path):
    # The checkpoint was written by a fused (one CPU process) run; a foreach optimizer, as a
    # CUDA or torchrun process builds, keeps running foreach after loading it, and back.
    other = _loop(tmp_path / "other")
    params = [p for p in other.model.parameters() if p.requires_grad]
    foreach = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    load_checkpoint(saved, other.model, foreach, other.scheduler)
    assert all(g["foreach"] and not g["fused"] for g in foreach.param_groups)
    assert torch.load(saved / "optimizer.pt", weights_only=True)["param_groups"][0]["fused"]
    load_checkpoint(saved, other.model, other.optimizer, other.scheduler)
    assert all(g["fused"] and not g["foreach"] for g in other.optimizer.param_groups)
    assert other.optimizer.state  # the moments were restored
