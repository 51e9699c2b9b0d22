"""The training loop on a tiny real Llama: loss falls, only adapter weights move, resume is exact."""

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.data.dataset import batch_plan, collate, tokenize_conversations
from tunesmith.data.records import Conversation
from tunesmith.loss import loss_sum
from tunesmith.methods import MethodArgs, get_method
from tunesmith.train.checkpoint import latest_valid_checkpoint
from tunesmith.train.fastpath import FastPaths, attention
from tunesmith.train.fastpath.passes import LengthSortedPasses, PackedPasses, PassPolicy
from tunesmith.train.loop import LoopSettings, TrainLoop
from tunesmith.train.signals import Diverged


def _examples(tok, n=24):
    convs = [
        Conversation.from_messages(
            [
                {"role": "user", "content": f"How many patients live in city {i % 5}?"},
                {
                    "role": "assistant",
                    "content": f"SELECT COUNT(*) FROM patients WHERE city = {i % 5}",
                },
            ]
        )
        for i in range(n)
    ]
    return tokenize_conversations(tok, convs, seq_len=128)


def _lora_model(seed=0, **overrides):
    model = make_tiny_model("llama", seed=seed, **overrides)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return get_method("lora").apply(
        model, MethodArgs(rank=8, alpha=16, dropout=0.0, target=targets)
    )


def _loop(model, tok, tmp_path, steps=12, **kw):
    s = LoopSettings(
        max_steps=steps, batch_size=4, lr=1e-2, logging_steps=2, warmup_ratio=0.0,
        lr_scheduler="constant", seed=3, **kw,
    )  # fmt: skip
    return TrainLoop(model, _examples(tok), tok.pad_token_id, s, tmp_path, torch.device("cpu"))


def test_loss_falls_and_only_adapter_params_change(tmp_path):
    tok = make_tokenizer()
    model = _lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = _loop(model, tok, tmp_path).train()
    # A random tiny model has a floor near 5.1 nats here; 12 steps take it from 6.17 to ~5.15.
    assert sum(result.losses[-3:]) / 3 < 0.9 * sum(result.losses[:3]) / 3
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == ("lora_" in n), n
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 6 and all('"tokens_per_s"' in r for r in rows)


def test_fast_loss_equals_reference_loss():
    tok = make_tokenizer()
    model = _lora_model()
    b = collate(_examples(tok)[:6], tok.pad_token_id)
    with torch.no_grad():
        fast = loss_sum(model, b, fast=True)
        ref = loss_sum(model, b, fast=False)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_batch_plan_is_deterministic_and_covers_every_example():
    lengths = [5, 9, 3, 7, 2, 8, 6, 4, 1, 10]
    a = batch_plan(lengths, 3, seed=1, epoch=0)
    assert a == batch_plan(lengths, 3, seed=1, epoch=0)
    assert a != batch_plan(lengths, 3, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(10))


def test_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path):
    tok = make_tokenizer()
    full = _loop(_lora_model(), tok, tmp_path / "a").train().losses

    # Train with a checkpoint every 5 steps and "crash" after step 7.
    _loop(_lora_model(), tok, tmp_path / "b", save_steps=5).train(stop_after=7)
    ckpt, _ = latest_valid_checkpoint(tmp_path / "b" / "checkpoints")
    assert ckpt.name == "step-5"
    # Same base, scrambled adapter: the trained weights must come from the checkpoint.
    model = _lora_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    resumed = _loop(model, tok, tmp_path / "b").train(resume_from=ckpt)
    assert resumed.resumed_from == 5
    torch.testing.assert_close(
        torch.tensor(resumed.losses), torch.tensor(full), rtol=1e-5, atol=1e-6
    )


def _varied_examples(tok, n=24):
    """Records of very different lengths, so that splitting by length changes the passes."""
    convs = [
        Conversation.from_messages(
            [
                {"role": "user", "content": "Count patients " + "in the city " * (i % 7)},
                {"role": "assistant", "content": "SELECT COUNT(*) FROM patients" + " x" * i},
            ]
        )
        for i in range(n)
    ]
    return tokenize_conversations(tok, convs, seq_len=256)


def test_length_split_passes_train_like_the_reference_path(tmp_path):
    """Splitting micro-batches into length-sorted passes changes float order, not the math."""
    tok = make_tokenizer()
    examples = _varied_examples(tok)
    runs = {}
    for name, policy in (("reference", PassPolicy()), ("split", LengthSortedPasses(4.0, None))):
        model = _lora_model()
        s = LoopSettings(
            max_steps=6, batch_size=8, lr=1e-2, warmup_ratio=0.0, lr_scheduler="constant", seed=3,
        )  # fmt: skip
        loop = TrainLoop(
            model, examples, tok.pad_token_id, s, tmp_path / name, torch.device("cpu"),
            fast_paths=FastPaths(pass_policy=policy),
        )  # fmt: skip
        passes = loop.micro_batches(0)
        runs[name] = (loop.train().losses, {n: p.detach() for n, p in model.named_parameters()})
        runs[name + "_passes"] = passes
    assert len(runs["reference_passes"]) == 1 and len(runs["split_passes"]) > 1
    padding = {
        k: sum(b.input_ids.numel() - b.num_tokens for b in runs[k + "_passes"])
        for k in ("reference", "split")
    }
    assert padding["split"] < padding["reference"]
    torch.testing.assert_close(runs["split"][0], runs["reference"][0], rtol=1e-5, atol=1e-5)
    for n, p in runs["reference"][1].items():
        torch.testing.assert_close(runs["split"][1][n], p, rtol=1e-4, atol=1e-5)


def test_packed_passes_train_like_the_reference_path(tmp_path):
    """Packed passes (CPU, grouped attention; padded to a bucket) change float order, not math."""
    tok = make_tokenizer()
    examples = _varied_examples(tok)
    runs = {}
    for name, policy in (("reference", PassPolicy()), ("packed", PackedPasses(max_tokens=160))):
        model = _lora_model(attn_implementation="eager")
        assert attention.install(model).count == 1
        s = LoopSettings(
            max_steps=6, batch_size=8, lr=1e-2, warmup_ratio=0.0, lr_scheduler="constant", seed=3,
        )  # fmt: skip
        loop = TrainLoop(
            model, examples, tok.pad_token_id, s, tmp_path / name, torch.device("cpu"),
            fast_paths=FastPaths(pass_policy=policy),
        )  # fmt: skip
        runs[name + "_passes"] = [b for step in range(6) for b in loop.micro_batches(step)]
        runs[name] = (loop.train().losses, {n: p.detach() for n, p in model.named_parameters()})
    packed = runs["packed_passes"]
    assert len(packed) > len(runs["reference_passes"])  # the 160-token bound split some steps
    count = sum(b.num_examples for b in runs["reference_passes"])
    assert sum(b.num_examples for b in packed) == count == 6 * 8  # examples, not rows
    bucket = PackedPasses().bucket
    assert all(b.input_ids.shape[0] == 1 and b.input_ids.numel() % bucket == 0 for b in packed)
    assert any(b.num_tokens < b.input_ids.numel() for b in packed)  # padding rides along
    assert all(b.input_ids.numel() <= 160 for b in packed if b.num_examples > 1)
    torch.testing.assert_close(runs["packed"][0], runs["reference"][0], rtol=1e-5, atol=1e-5)
    for n, p in runs["reference"][1].items():
        torch.testing.assert_close(runs["packed"][1][n], p, rtol=1e-4, atol=1e-5)


def test_stop_when_ends_the_run_at_the_step_it_names(tmp_path):
    """The caller's predicate sees every step's loss; its reason ends the run there."""
    tok = make_tokenizer()
    seen = []

    def stop_when(losses):
        seen.append(list(losses))
        return "enough" if len(losses) == 3 else None

    s = LoopSettings(max_steps=12, batch_size=4, lr=1e-2, logging_steps=1, seed=3)
    loop = TrainLoop(
        _lora_model(), _examples(tok), tok.pad_token_id, s, tmp_path, torch.device("cpu"),
        stop_when=stop_when,
    )  # fmt: skip
    with pytest.raises(Diverged, match="stopped at step 3: enough"):
        loop.train()
    assert [len(x) for x in seen] == [1, 2, 3]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_signal_during_the_ranks_agreement_stops_the_next_step(tmp_path, monkeypatch):
    """SIGTERM landing while the ranks agree on stopping (inside the all-reduce) is not lost."""
    import os
    import signal

    from tunesmith.train.signals import Interrupted

    tok = make_tokenizer()
    loop = _loop(_lora_model(), tok, tmp_path, steps=12)
    agree = loop.dist.any
    calls = []

    def any_with_a_signal_in_flight(flag):
        calls.append(flag)
        answer = agree(flag)  # what the ranks agreed before the signal was handled
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before this call returns
        return answer

    monkeypatch.setattr(loop.dist, "any", any_with_a_signal_in_flight)
    with pytest.raises(Interrupted, match="stopped at step 3"):
        loop.train()
    assert calls == [False, False, True]
    assert latest_valid_checkpoint(tmp_path / "checkpoints")[0].name == "step-3"
