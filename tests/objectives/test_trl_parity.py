"""tunesmith's preference losses against TRL's trainers, the reference implementation.

Same tiny model, same LoRA weights, same batch, beta and fp32: the loss and every adapter
gradient agree within 1e-4. TRL is the oracle only; tunesmith never imports it.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.objectives import (
    OBJECTIVES,
    PairIds,
    SequenceLogps,
    UnpairedIds,
    collate_pairs,
    collate_unpaired,
    live_reference,
    objective_params,
    orpo_loss,
    sequence_logps,
    simpo_loss,
    token_logps,
)

# The oracle calls trl 1.x APIs (trl.experimental.orpo/cpo, the fused-head DPOTrainer).
trl = pytest.importorskip("trl", minversion="1.16")
datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")

TOL = 1e-4
PROMPTS = [
    (
        "How many patients live in Lyon?",
        " SELECT COUNT(*) FROM patients WHERE city = 'Lyon';",
        " SELECT name FROM doctors;",
    ),
    ("List the prescriptions", " SELECT * FROM prescriptions;", " SELECT COUNT(*) FROM visits;"),
    (
        "Which doctor has the most visits?",
        " SELECT doctor_id FROM visits GROUP BY doctor_id;",
        " SELECT 1;",
    ),
]


def _lora_config():
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def _perturb(model: torch.nn.Module) -> None:
    """Make the fresh adapter (B = 0) differ from the base, so the policy is not its reference."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and ".default." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _twin(trl_model: torch.nn.Module, base: torch.nn.Module) -> torch.nn.Module:
    """tunesmith's own PEFT model over an untouched copy of the base, with TRL's adapter weights."""
    ours = peft.get_peft_model(base, _lora_config())
    state = {k: v for k, v in trl_model.state_dict().items() if "lora_" in k and ".default." in k}
    missing = ours.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys and state
    return ours.train()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n.split("lora_")[0][-40:] + n.split("lora_")[1]: p.grad.clone()
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def _assert_close_grads(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    g_ours, g_theirs = _grads(ours), _grads(theirs)
    assert g_ours.keys() == g_theirs.keys() and g_ours
    for k in g_ours:
        torch.testing.assert_close(g_ours[k], g_theirs[k], atol=TOL, rtol=TOL, msg=k)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _dpo_trainer(tok, tmp_path, base, **config):
    data = datasets.Dataset.from_list(
        [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PROMPTS]
    )
    args = trl.DPOConfig(
        output_dir=str(tmp_path), beta=0.1, report_to=[], per_device_train_batch_size=3, use_cpu=True,
        gradient_checkpointing=False, **config,
    )  # fmt: skip
    return trl.DPOTrainer(
        model=base, args=args, train_dataset=data, processing_class=tok, peft_config=_lora_config()
    )


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_dpo_loss_and_gradients_match_trl(tok, tmp_path, sft_weight):
    """Plain DPO, and DPO with an SFT term (TRL: loss_type ["sigmoid", "sft"], weights [1, w])."""
    base = make_tiny_model(vocab_size=len(tok))
    extra = (
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]} if sft_weight else {}
    )
    trainer = _dpo_trainer(tok, tmp_path, copy.deepcopy(base), **extra)
    _perturb(trainer.model)
    ours = _twin(trainer.model, base)
    examples = [trainer.train_dataset[i] for i in range(len(PROMPTS))]
    batch = trainer.data_collator(examples)

    # The concatenated layout is TRL's, row for row.
    pairs = [PairIds(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples]
    mine = collate_pairs(pairs, pad_id=tok.pad_token_id)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(mine, key), batch[key]), key

    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    result = OBJECTIVES["dpo"].compute(
        ours,
        mine,
        objective_params(OBJECTIVES["dpo"], beta=0.1, sft_weight=sft_weight),
        live_reference(ours),
    )
    result.loss.backward()
    assert abs(theirs.item() - 0.6931) > 1e-3  # the policy differs from its reference
    assert result.loss.item() == pytest.approx(theirs.item(), abs=TOL)
    _assert_close_grads(ours, trainer.model)


def test_sequence_logps_match_trl_batch_logps(tok):
    """Our summed and mean completion log-probs equal TRL's ``get_batch_logps`` on the same logits."""
    from trl.experimental.orpo import ORPOTrainer

    model = make_tiny_model(vocab_size=len(tok))
    pairs = [
        PairIds(tok(p).input_ids, tok(c).input_ids + [tok.eos_token_id], tok(r).input_ids)
        for p, c, r in PROMPTS
    ]
    batch = collate_pairs(pairs, pad_id=tok.pad_token_id)
    got = sequence_logps(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)
    torch.testing.assert_close(
        got.total.detach(), ORPOTrainer.get_batch_logps(logits, labels), atol=TOL, rtol=TOL
    )
    torch.testing.assert_close(
        got.mean.detach(),
        ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True),
        atol=TOL,
        rtol=TOL,
    )
    lengths = torch.tensor(
        [len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs], dtype=got.tokens.dtype
    )
    assert torch.equal(got.tokens, lengths)
    torch.testing.assert_close(
        token_logps(logits, batch.input_ids),
        torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0],
    )


def _random_logps(n: int, seed: int) -> tuple[SequenceLogps, SequenceLogps]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 12, (2 * n,), generator=gen).float()
    total = -(torch.rand(2 * n, generator=gen) * 2 + 0.1) * tokens
    return SequenceLogps(total.requires_grad_(), tokens).halves()


def test_orpo_odds_ratio_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = _random_logps(4, seed=0)
    fake = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device="cpu"))
    losses, *_ = ORPOTrainer.odds_ratio_loss(fake, chosen.mean, rejected.mean)
    nll = -chosen.total.sum() / chosen.tokens.sum()
    expected = nll - losses.mean()  # TRL: policy_nll_loss - losses.mean()
    (g_theirs,) = torch.autograd.grad(expected, chosen.total, retain_graph=True)
    got = orpo_loss(chosen, rejected, beta=0.1).loss
    (g_ours,) = torch.autograd.grad(got, chosen.total)
    assert got.item() == pytest.approx(expected.item(), abs=TOL)
    torch.testing.assert_close(g_ours, g_theirs, atol=TOL, rtol=TOL)


def test_simpo_matches_trl_cpo_simpo():
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = _random_logps(4, seed=1)
    fake = SimpleNamespace(
        beta=2.0, simpo_gamma=1.0, loss_type="simpo", label_smoothing=0.0, alpha=0.0,
        accelerator=SimpleNamespace(device="cpu"),
    )  # fmt: skip
    losses, *_ = CPOTrainer.cpo_loss(fake, chosen.mean, rejected.mean)
    got = simpo_loss(chosen, rejected, **{"beta": 2.0, "gamma": 1.0})
    assert got.loss.item() == pytest.approx(losses.mean().item(), abs=TOL)


def test_kto_loss_and_gradients_match_trl(tok, tmp_path):
    rows = []
    for p, c, r in PROMPTS:
        rows += [
            {"prompt": p, "completion": c, "label": True},
            {"prompt": p, "completion": r, "label": False},
        ]
    data = datasets.Dataset.from_list(rows)
    args = trl.KTOConfig(
        output_dir=str(tmp_path), beta=0.1, report_to=[], per_device_train_batch_size=len(rows), use_cpu=True,
        gradient_checkpointing=False,
    )  # fmt: skip
    base = make_tiny_model(vocab_size=len(tok))
    trainer = trl.KTOTrainer(
        model=copy.deepcopy(base),
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=_lora_config(),
    )
    _perturb(trainer.model)
    ours = _twin(trainer.model, base)
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(examples)
    unpaired = [
        UnpairedIds(e["prompt_ids"], e["completion_ids"], bool(e["label"])) for e in examples
    ]
    mine = collate_unpaired(unpaired, pad_id=tok.pad_token_id)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(mine.rows, key), batch[key]), key
        assert torch.equal(getattr(mine.kl_rows, key), batch[f"KL_{key}"]), f"KL_{key}"

    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    spec = OBJECTIVES["kto"]
    result = spec.compute(ours, mine, objective_params(spec), live_reference(ours))
    result.loss.backward()
    assert result.loss.item() == pytest.approx(theirs.item(), abs=TOL)
    _assert_close_grads(ours, trainer.model)
