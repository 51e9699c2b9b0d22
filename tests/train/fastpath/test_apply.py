"""The one entry point: apply_fast_paths installs, reports, trains like the reference, undoes."""

from __future__ import annotations

import logging

import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from tests.tiny import make_tiny_model, make_tokenizer
from tests.train.test_loop import _varied_examples
from tunesmith.data.shared_prefix import shareable_prefix
from tunesmith.loss.head_ce import reference_head_cross_entropy
from tunesmith.train.fastpath import FastPaths, apply_fast_paths, fast_head_loss
from tunesmith.train.fastpath.passes import LengthSortedPasses, PackedPasses, PassPolicy
from tunesmith.train.loop import LoopSettings, TrainLoop

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _lora(dropout=0.1, arch="llama", **overrides):
    base = make_tiny_model(arch, vocab_size=64, attn_implementation="eager", **overrides)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"]
    )
    return get_peft_model(base, config)


def _forwards(model) -> list[tuple[str, type, object]]:
    """Every module's class and the function its ``forward`` runs."""
    return [
        (name, type(m), getattr(m.forward, "__func__", m.forward))
        for name, m in model.named_modules()
    ]


def _kernel_paths(cpu_kernels) -> dict[str, int]:
    """The paths that run tunesmith's CPU kernels in the tiny Llama: its 2 MLPs, where built."""
    return {"swiglu": 2} if cpu_kernels is not None else {}


def test_installed_on_cpu_only_with_the_counts_and_policies(cpu_kernels):
    untouched = _lora()
    nothing = apply_fast_paths(untouched, CUDA)
    assert nothing.installed == {} and nothing.skipped == {}
    assert type(nothing.pass_policy) is PassPolicy and nothing.trimmer is None
    assert nothing.head_loss is reference_head_cross_entropy
    assert untouched.get_base_model().config._attn_implementation == "eager"
    model = _lora()
    fast = apply_fast_paths(model, CPU)
    # q and v dropouts and fused LoRA nodes in 2 layers; 7 frozen projections per layer (q and v as LoRA base
    # layers) and the head; 2 norms per layer and the final one; RoPE in 2 attention layers;
    # one attention switch; the 2 MLPs' SwiGLU where the kernels are built.
    assert fast.installed == {
        "dropout": 4, "lora": 4, "frozen_linear": 15, "rmsnorm": 5, "rope": 2, "attention": 1,
        **_kernel_paths(cpu_kernels),
    }  # fmt: skip
    assert model.get_base_model().config._attn_implementation == "tunesmith_cpu"
    assert isinstance(fast.pass_policy, PackedPasses) and fast.head_loss is fast_head_loss
    ids = torch.randint(0, 64, (2, 9))
    loss = model.train()(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_packed_passes_only_where_the_grouped_attention_runs_and_rows_stay_apart():
    assert isinstance(apply_fast_paths(_lora(), CPU).pass_policy, PackedPasses)
    mam_like = apply_fast_paths(_lora(), CPU, kv_prefix=True)  # MAM's prefix is per row
    assert isinstance(mam_like.pass_policy, LengthSortedPasses)
    assert "key/value prefix" in mam_like.skipped["packed passes"]
    rows = apply_fast_paths(_lora(), CPU, packed_rows=True)  # --packing rows stay as they are
    assert isinstance(rows.pass_policy, LengthSortedPasses)
    sdpa = get_peft_model(
        make_tiny_model("llama", vocab_size=64, attn_implementation="sdpa"),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    assert isinstance(apply_fast_paths(sdpa, CPU).pass_policy, LengthSortedPasses)  # T^2 eager
    prompt = get_peft_model(
        make_tiny_model("llama", vocab_size=64, attn_implementation="eager"),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    assert isinstance(apply_fast_paths(prompt, CPU).pass_policy, LengthSortedPasses)


def test_undo_gives_the_model_back_exactly():
    model = _lora()
    forwards, keys = _forwards(model), set(model.state_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.get_base_model().config
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.eval()(input_ids=ids).logits
    fast = apply_fast_paths(model, CPU)
    assert _forwards(model) != forwards and config._attn_implementation == "tunesmith_cpu"
    with torch.no_grad():
        model(input_ids=ids)  # fills the attention caches
    assert fast.caches.masks.source is not None
    fast.undo()
    assert _forwards(model) == forwards
    assert config._attn_implementation == "eager"
    assert set(model.state_dict()) == keys
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "_tunesmith_attention_caches") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference)
    # The handle is the reference path from now on; a second undo changes nothing.
    assert fast.installed == {} and type(fast.pass_policy) is PassPolicy and fast.trimmer is None
    fast.undo()
    assert _forwards(model) == forwards


def test_says_once_which_path_cannot_apply_and_why(caplog):
    from transformers import AutoModelForCausalLM, GemmaConfig

    config = GemmaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_implementation="eager",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        fast = apply_fast_paths(model, CPU)
    assert fast.installed == {"rope": 2}  # Gemma's RoPE is the standard formula
    by_path = {}
    for record in caplog.records:
        path = record.getMessage().split("CPU fast path ")[1].split(" does not apply")[0]
        by_path.setdefault(path, []).append(record)
    assert {p: len(r) for p, r in by_path.items()} == {
        "dropout": 1, "lora": 1, "frozen_linear": 1, "rmsnorm": 1, "swiglu": 1, "attention": 1,
        "packed passes": 1,
    }  # fmt: skip
    # A model the path does not know is a warning; a choice by design is info.
    assert by_path["attention"][0].levelno == logging.WARNING
    assert "'gemma'" in by_path["attention"][0].getMessage()
    assert by_path["rmsnorm"][0].levelno == logging.WARNING
    assert "GemmaRMSNorm" in by_path["rmsnorm"][0].getMessage()
    assert by_path["dropout"][0].levelno == logging.INFO


def _train(fast: bool, tmp_path, steps: int = 8):
    """``steps`` LoRA steps of a bf16 tiny Llama on CPU, with or without the fast paths."""
    tok = make_tokenizer()
    base = make_tiny_model("llama", attn_implementation="eager").to(torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    handle = apply_fast_paths(model, CPU) if fast else FastPaths()
    settings = LoopSettings(
        max_steps=steps, batch_size=8, lr=5e-3, warmup_ratio=0.0, lr_scheduler="constant",
        seed=3, autocast_dtype=torch.bfloat16, keep_input_dtype=True,
    )  # fmt: skip
    loop = TrainLoop(
        model, _varied_examples(tok), tok.pad_token_id, settings, tmp_path, CPU, fast_paths=handle
    )
    losses = loop.train().losses
    moved = {n: p.detach() - init[n] for n, p in model.named_parameters() if p.requires_grad}
    return losses, moved, handle


def test_training_with_the_fast_paths_matches_the_reference_path(tmp_path, cpu_kernels):
    """Fused LoRA, RMSNorm and RoPE, the kernels' SwiGLU (where built), grouped packed attention,
    packed passes, chunked loss vs the reference: same losses and trained weights within bf16
    rounding. (Dropout is off: its
    masks are random draws, compared with nn.Dropout statistically in test_dropout.py.)"""
    ref_losses, ref_moved, _ = _train(False, tmp_path / "reference")
    losses, moved, handle = _train(True, tmp_path / "fast")
    assert handle.installed == {
        "lora": 4, "frozen_linear": 15, "rmsnorm": 5, "rope": 2, "attention": 1,
        **_kernel_paths(cpu_kernels),
    }  # fmt: skip
    assert isinstance(handle.pass_policy, PackedPasses)
    # Its packed rows store the records' common prompt opening once (data/shared_prefix.py).
    assert handle.pass_policy.share_prefix
    assert shareable_prefix(_varied_examples(make_tokenizer())) >= 4
    assert ref_losses[-1] < ref_losses[0]  # it trained
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-2, atol=0)
    # Adam turns a gradient's sign into a full step, so an element whose gradient sits within
    # bf16 rounding of zero may move the other way: compare each tensor's whole update. One
    # such element of a 64 x 8 lora_A flipped at the first step is ~2/sqrt(512) = 0.09 of that
    # step's update, ~0.05 of eight steps' (and of its lora_B's, which follows it); rounding
    # alone leaves < 0.03.
    for name, ref in ref_moved.items():
        off = float((moved[name] - ref).norm() / ref.norm())
        assert off < 0.08, (name, off)


def test_the_reference_handle_changes_nothing():
    model = _lora()
    forwards = _forwards(model)
    handle = FastPaths()
    assert not handle.after_step()
    handle.undo()
    assert _forwards(model) == forwards
