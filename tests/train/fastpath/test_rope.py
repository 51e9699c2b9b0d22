"""The fused RoPE against its reference, transformers' own apply_rotary_pos_emb."""

from __future__ import annotations

import pickle

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

from tests.tiny import make_tiny_model
from tunesmith.train.fastpath import FastPaths, apply_fast_paths
from tunesmith.train.fastpath import rope as rope_module
from tunesmith.train.fastpath.rope import install, rope, why_not_standard_rope

REFERENCE = modeling_llama.apply_rotary_pos_emb


def _inputs(dtype, t=37, d=64, batch=2):
    """Queries and keys as transformers makes them (a transposed view of the projection),
    with the model's own cos/sin."""
    gen = torch.Generator().manual_seed(0)
    q_proj = torch.randn(batch, t, 4 * d, generator=gen).to(dtype).requires_grad_()
    k_proj = torch.randn(batch, t, 2 * d, generator=gen).to(dtype).requires_grad_()
    q = q_proj.view(batch, t, 4, d).transpose(1, 2)
    k = k_proj.view(batch, t, 2, d).transpose(1, 2)
    config = modeling_llama.LlamaConfig(
        hidden_size=4 * d, num_attention_heads=4, num_key_value_heads=2, head_dim=d
    )
    positions = torch.arange(t).repeat(batch, 1)
    cos, sin = modeling_llama.LlamaRotaryEmbedding(config)(q_proj.detach(), positions)
    grads = (
        torch.randn(q.shape, generator=gen).to(dtype),
        torch.randn(k.shape, generator=gen).to(dtype),
    )
    return (q_proj, k_proj), (q, k, cos, sin), grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_equals_transformers_bit_for_bit_forward_and_backward(dtype):
    leaves, args, grads = _inputs(dtype)
    want = REFERENCE(*args)
    want_grads = torch.autograd.grad(want, leaves, grads)
    got = rope(*args)
    got_grads = torch.autograd.grad(got, leaves, grads)
    for w, g in zip((*want, *want_grads), (*got, *got_grads), strict=True):
        assert g.dtype == w.dtype and g.stride() == w.stride()  # same layout for what follows
        assert torch.equal(g, w)


def test_the_probe_accepts_llama_and_qwen2_and_refuses_other_formulas():
    assert why_not_standard_rope(REFERENCE) is None
    assert why_not_standard_rope(modeling_qwen2.apply_rotary_pos_emb) is None

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):  # GPT-J style pairs, not halves
        def rot(x):
            return torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)

        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    def broken(q, k, cos, sin, unsqueeze_dim=1):
        raise RuntimeError("not this one")

    assert "does not compute" in why_not_standard_rope(interleaved)
    assert "failed on a probe input (RuntimeError)" in why_not_standard_rope(broken)


def _lora(arch="llama"):
    base = make_tiny_model(arch, vocab_size=64, attn_implementation="eager")
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def _attention_classes(model) -> set[type]:
    return {type(m) for m in model.modules() if type(m).__name__.endswith("Attention")}


def test_install_changes_this_models_attention_layers_only_and_undo_restores_them():
    model, other = _lora(), _lora()
    patch = install(model)
    assert patch.count == 2 and patch.skipped is None  # one per attention layer
    assert {c.__name__ for c in _attention_classes(model)} == {"RopeLlamaAttention"}
    assert _attention_classes(other) == {modeling_llama.LlamaAttention}
    assert all(isinstance(m, modeling_llama.LlamaAttention) for m in model.modules()
               if type(m).__name__.endswith("Attention"))  # fmt: skip
    ids = torch.randint(0, 64, (1, 5))
    calls = []
    original_rope = rope_module.rope
    rope_module.rope = lambda *a, **kw: calls.append(1) or original_rope(*a, **kw)
    try:
        model.train()(input_ids=ids, labels=ids).loss.backward()
    finally:
        rope_module.rope = original_rope
    assert len(calls) == 2  # the fused RoPE ran in both layers
    assert modeling_llama.apply_rotary_pos_emb is REFERENCE  # and was put back after each
    other.train()(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 2  # the other model ran transformers' own
    clone = pickle.loads(pickle.dumps(model))  # the subclass is importable by name
    assert {c.__name__ for c in _attention_classes(clone)} == {"RopeLlamaAttention"}
    patch.undo()
    assert _attention_classes(model) == {modeling_llama.LlamaAttention}


def test_inference_and_mixed_dtypes_run_the_original():
    fused = rope_module._fused(REFERENCE)
    _, (q, k, cos, sin), _ = _inputs(torch.bfloat16)
    with torch.no_grad():
        out = fused(q, k, cos, sin)
    assert out[0].grad_fn is None and torch.equal(out[0], REFERENCE(q, k, cos, sin)[0])
    mixed = fused(q, k, cos.float(), sin.float())  # type promotion, as transformers does
    assert mixed[0].dtype == torch.float32
    assert torch.equal(mixed[0], REFERENCE(q, k, cos.float(), sin.float())[0])
    assert torch.equal(fused(q, k, cos, sin, unsqueeze_dim=1)[1], REFERENCE(q, k, cos, sin)[1])
    # Arguments of another signature go to the original as they came.
    with pytest.raises(TypeError):
        fused(q, k, cos, sin, None, 1)  # (position_ids, unsqueeze_dim): not llama's today


def test_a_model_trains_identically_with_the_fused_rope():
    """Three LoRA steps of a bf16 tiny Llama, RoPE fused or not, everything else the same:
    losses and trained weights equal bit for bit."""

    def train(fused: bool):
        model = _lora()
        model.to(torch.bfloat16)
        patch = install(model) if fused else FastPaths()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(3):
            loss = model.train()(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        patch.undo()
        return losses, [p.detach().clone() for p in model.parameters() if p.requires_grad]

    ref_losses, ref_weights = train(False)
    losses, weights = train(True)
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, ref_weights, strict=True))


def test_apply_fast_paths_installs_it_and_undo_takes_it_back():
    model = _lora()
    fast = apply_fast_paths(model, torch.device("cpu"))
    assert fast.installed["rope"] == 2
    assert {c.__name__ for c in _attention_classes(model)} == {"RopeLlamaAttention"}
    fast.undo()
    assert _attention_classes(model) == {modeling_llama.LlamaAttention}


def test_a_model_without_rope_attention_is_skipped():
    patch = install(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert patch.count == 0 and "apply_rotary_pos_emb" in patch.skipped
