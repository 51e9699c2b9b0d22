"""A DPO run interrupted and resumed trains exactly as one that was not (loss for loss)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.data.preference import parse_preference
from tunesmith.demo.pairs import demo_pairs
from tunesmith.methods import MethodArgs, get_method
from tunesmith.objectives import get_objective, objective_params
from tunesmith.train.checkpoint import latest_valid_checkpoint
from tunesmith.train.loop import LoopSettings, TrainLoop
from tunesmith.train.pref_batches import PreferenceBatches, objective_loss_fn
from tunesmith.train.pref_steps import tokenize_preferences


@pytest.fixture(scope="module")
def pairs():
    tok = make_tokenizer()
    train, _ = demo_pairs(seed=0, n_train=12, n_eval=2)
    records = [parse_preference(r, f"t:{i}") for i, r in enumerate(train)]
    return tok, tokenize_preferences(tok, records, seq_len=256)


def _loop(run_dir, tok, examples):
    model = get_method("lora").apply(
        make_tiny_model(vocab_size=len(tok)),
        MethodArgs(rank=4, alpha=8, dropout=0.0, target=("q_proj", "v_proj")),
    )
    settings = LoopSettings(
        max_steps=4, batch_size=3, grad_accum=2, lr=5e-3, save_steps=2, logging_steps=1, seed=3
    )
    spec = get_objective("dpo")
    batches = PreferenceBatches(
        examples, tok.pad_token_id, batch_size=3, grad_accum=2, seed=3, group_by_length=False
    )
    return TrainLoop(
        model, examples, tok.pad_token_id, settings, run_dir, torch.device("cpu"),
        batches=batches, loss_fn=objective_loss_fn(spec, objective_params(spec)),
    )  # fmt: skip


def test_step_plan_is_a_pure_function_of_the_step(pairs):
    tok, examples = pairs
    a = PreferenceBatches(examples, 0, batch_size=3, grad_accum=2, seed=1, group_by_length=True)
    b = PreferenceBatches(examples, 0, batch_size=3, grad_accum=2, seed=1, group_by_length=True)
    for step in (5, 0, 3):
        for x, y in zip(a.of_step(step), b.of_step(step), strict=True):
            assert torch.equal(x.batch.input_ids, y.batch.input_ids)
    split = a.of_step(1, split=2)  # an OOM retry: same examples, smaller passes
    assert sum(m.num_examples for m in split) == sum(m.num_examples for m in a.of_step(1)) == 6


def test_resumed_dpo_run_matches_the_uninterrupted_one(pairs, tmp_path):
    tok, examples = pairs
    straight = _loop(tmp_path / "a", tok, examples).train()
    _loop(tmp_path / "b", tok, examples).train(stop_after=3)
    ckpt, _ = latest_valid_checkpoint(tmp_path / "b" / "checkpoints")
    assert ckpt.name == "step-2"
    resumed = _loop(tmp_path / "b", tok, examples).train(resume_from=ckpt)
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    assert straight.losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert straight.losses[-1] < straight.losses[0]
