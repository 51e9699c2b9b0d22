"""Faults inside a run on a tiny real Llama: OOM, NaN/inf, a full disk, a run that will not fit.

Faults are injected the way they happen: a forward pre-hook raises the allocator's error or
poisons activations at a chosen forward call; the disk check is run against the real disk
with a margin larger than any disk.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.reliability.conftest import make_loop
from tests.train.test_loop import _lora_model
from tunesmith.cli import main
from tunesmith.errors import WorkFailed
from tunesmith.report.metrics import read_metrics
from tunesmith.train import guard
from tunesmith.train.checkpoint import list_checkpoints, verify_checkpoint
from tunesmith.train.loop import TrainLoop


def _loop(model, run_dir, **kw) -> TrainLoop:
    return make_loop(run_dir, model, grad_accum=2, **kw)


def _embeddings(model):
    return model.get_base_model().model.embed_tokens


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class FailAtCall:
    """Forward pre-hook: on forward call ``at`` (1-based), run ``action(input_ids)`` once."""

    def __init__(self, at: int, action):
        self.at, self.action, self.calls, self.fired = at, action, 0, 0

    def __call__(self, module, args):
        self.calls += 1
        if self.calls == self.at:
            self.fired += 1
            return self.action(args)
        return None


# -- out of memory --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"),
    ],
    ids=["cuda", "cpu"],
)
def test_oom_step_is_redone_with_half_micro_batch_and_nothing_lost(error, tmp_path):
    reference_loop = _loop(_lora_model(), tmp_path / "ref")
    reference = reference_loop.train()

    model = _lora_model()

    def oom(args):
        if args[0].shape[0] > 2:  # only a micro-batch larger than 2 "does not fit"
            raise error

    hook = FailAtCall(at=5, action=oom)  # step 3's first micro-batch (2 per step)
    _embeddings(model).register_forward_pre_hook(hook)
    loop = _loop(model, tmp_path / "oom")
    result = loop.train()

    assert hook.fired == 1 and result.oom_retries == 1
    assert (loop.micro_batch_size, loop.accumulation) == (2, 4)
    # The same examples and the same effective batch (4 x 2 = 2 x 4) at every step ...
    assert loop.micro_batch_size * loop.accumulation == 4 * 2
    assert result.examples_seen == reference.examples_seen == 6 * 8
    # ... so the same losses (up to float summation order), step 3 included.
    assert len(result.losses) == 6
    torch.testing.assert_close(
        torch.tensor(result.losses), torch.tensor(reference.losses), rtol=1e-5, atol=1e-6
    )
    rows = read_metrics(tmp_path / "oom" / "metrics.jsonl")
    assert "micro_batch" not in rows[1] and rows[2]["micro_batch"] == 2
    assert rows[2]["grad_accum"] == 4


def test_oom_at_micro_batch_1_fails_with_advice(tmp_path):
    model = _lora_model()

    def always(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    _embeddings(model).register_forward_pre_hook(always)
    with pytest.raises(WorkFailed, match="even with micro-batch 1; lower --seq-len"):
        _loop(model, tmp_path).train()


@pytest.mark.parametrize(
    "exc, expected",
    [
        (torch.OutOfMemoryError("x"), True),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 8 bytes"), True),
        (RuntimeError("MPS backend out of memory"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_is_oom(exc, expected):
    assert guard.is_oom(exc) is expected


def test_a_real_cpu_allocation_failure_is_recognised():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert guard.is_oom(info.value)


@pytest.mark.gpu
def test_cuda_cap_turns_an_over_budget_allocation_into_a_catchable_oom():
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(0).total_memory
    guard.cap_device_memory(device, 0.05)
    try:
        with pytest.raises(torch.OutOfMemoryError) as info:
            torch.empty(int(0.10 * total), dtype=torch.uint8, device=device)
        assert guard.is_oom(info.value)
        torch.empty(int(0.01 * total), dtype=torch.uint8, device=device)  # under the cap: fine
    finally:
        guard.cap_device_memory(device, 1.0)
        guard.free_memory(device)


# -- NaN / inf ------------------------------------------------------------------------------
def _nan_hook(model, at: int) -> FailAtCall:
    """NaN activations from the first decoder layer's MLP on forward call ``at``."""
    mlp = model.get_base_model().model.layers[0].mlp
    hook = FailAtCall(at=at, action=lambda args: (args[0] * float("nan"),))
    mlp.register_forward_pre_hook(hook)
    return hook


def test_on_nan_skip_drops_exactly_that_update(tmp_path):
    before = _lora_model()
    _loop(before, tmp_path / "a").train(stop_after=2)

    model = _lora_model()
    hook = _nan_hook(model, at=5)  # step 3's first micro-batch
    result = _loop(model, tmp_path / "b", on_nan="skip").train(stop_after=3)

    assert hook.fired == 1 and result.skipped_steps == 1
    assert math.isnan(result.losses[2]) and all(math.isfinite(x) for x in result.losses[:2])
    # Step 3's update was dropped: the weights are exactly those after step 2.
    for name, value in _trainable(before).items():
        torch.testing.assert_close(_trainable(model)[name], value, rtol=0, atol=0)
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1]
    assert rows[2]["loss"] is None  # the step's window held only the skipped step


def test_on_nan_skip_run_finishes_with_finite_weights(tmp_path):
    model = _lora_model()
    _nan_hook(model, at=7)
    result = _loop(model, tmp_path, on_nan="skip").train()
    assert result.skipped_steps == 1 and len(result.losses) == 6
    assert all(torch.isfinite(p).all() for p in _trainable(model).values())
    assert result.losses[-1] < result.losses[0]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    model = _lora_model()
    _nan_hook(model, at=5)
    with pytest.raises(WorkFailed, match=r"diverged at step 3: loss nan.*--on-nan skip"):
        _loop(model, tmp_path, save_steps=2).train()
    saved = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in saved] == ["step-2"] and verify_checkpoint(saved[0])


def test_inf_gradient_is_caught_like_nan(tmp_path):
    model = _lora_model()
    # Finite loss, infinite gradient: scale the MLP input by a huge factor on its backward.
    mlp = model.get_base_model().model.layers[0].mlp

    def inf_grad(module, args):
        x = args[0]
        if x.requires_grad:
            x.register_hook(lambda g: g * float("inf"))
        return None

    hook = FailAtCall(at=3, action=lambda args: inf_grad(None, args))
    mlp.register_forward_pre_hook(hook)
    with pytest.raises(WorkFailed, match="diverged at step 2: gradient norm"):
        _loop(model, tmp_path).train()


# -- disk -----------------------------------------------------------------------------------
def test_save_refuses_when_the_disk_is_too_full(tmp_path, monkeypatch):
    loop = _loop(_lora_model(), tmp_path)
    result = loop.train(stop_after=1)
    loop.save(1, result, 0.0)  # fits on the real disk
    # Ask for more margin than this disk has free: the real check must refuse the save.
    from tunesmith import disk

    monkeypatch.setattr(disk, "DISK_MARGIN_BYTES", 10**18)  # more than any disk has free
    with pytest.raises(WorkFailed, match="not enough free disk to save the checkpoint"):
        loop.save(2, result, 0.0)
    # Nothing half-written: the earlier checkpoint intact, no step-2, no temp dirs.
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-1"] and verify_checkpoint(tmp_path / "checkpoints" / "step-1")


# -- the memory plan ------------------------------------------------------------------------
def test_train_writes_plan_json_before_training(tiny_llama_dir, qa_file, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_llama_dir), "--data", str(qa_file), "--output", str(out),
            "--max-steps", "1", "--eval-limit", "1", "--max-new-tokens", "1", "--skip-base-eval"]  # fmt: skip
    assert main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["verdict"] == "fits"
    assert plan["inputs"]["batch_size"] == 8 and plan["inputs"]["method"] == "lora"
    assert sum(plan["breakdown"].values()) == plan["total_bytes"]


def test_force_trains_past_a_does_not_fit_plan(tiny_llama_dir, qa_file, tmp_path, capsys):
    import shutil

    # A 70B-class config with no weights: refused without --force (see test_bad_input); with
    # --force the run goes on to loading, which is where this weightless model fails.
    model = tmp_path / "huge"
    shutil.copytree(tiny_llama_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672)
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    code = main(["train", "--model", str(model), "--data", str(qa_file), "--output", str(out),
                 "--force"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" not in err and "cannot load model" in err
    assert not out.exists()
