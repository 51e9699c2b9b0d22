"""Grouped CPU attention against its reference, transformers' eager attention."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from tests.tiny import make_tiny_model, make_tokenizer
from tests.train.test_loop import _varied_examples
from tunesmith.data.dataset import collate
from tunesmith.data.packing import pack_examples
from tunesmith.loss import loss_sum
from tunesmith.train.fastpath import attention
from tunesmith.train.fastpath.attention import grouped_attention, install, plain_attention


class _Module(torch.nn.Module):
    num_key_value_groups = 3


def _inputs(dtype, b=3, heads=6, kv_heads=2, q_len=11, kv_len=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, q_len, heads, 16, generator=g).transpose(1, 2).to(dtype)
    k = torch.randn(b, kv_heads, kv_len, 16, generator=g).to(dtype)
    v = torch.randn(b, kv_heads, kv_len, 16, generator=g).to(dtype)
    # Causal (aligned to the end of the keys) plus left padding of different lengths per row.
    keep = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    keep = keep.expand(b, 1, q_len, kv_len).clone()
    for row, pad in enumerate((0, 2, 4)[:b]):
        keep[row, :, :, :pad] = False
    mask = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min)
    return [t.requires_grad_() for t in (q, k, v)], mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kv_len", [11, 15])  # 15: a key prefix (cache, prefix tuning)
def test_matches_eager_forward_and_backward(dtype, kv_len):
    module = _Module().train()
    (q, k, v), mask = _inputs(dtype, kv_len=kv_len)
    ref, ref_probs = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    out, probs = grouped_attention(module, q, k, v, mask, scaling=0.25)
    assert out.shape == ref.shape and probs.shape == ref_probs.shape
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    grads = torch.autograd.grad(out, (q, k, v), g)
    if dtype == torch.bfloat16:  # same roundings in the forward
        assert torch.equal(out, ref) and torch.equal(probs, ref_probs)
        tol = dict(rtol=2e-2, atol=2e-2)  # eager's softmax backward runs in fp32
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        tol = dict(rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tol)


def test_a_new_mask_of_the_same_shape_is_not_served_from_the_cache():
    module = _Module()
    (q, k, v), mask = _inputs(torch.float32)
    grouped_attention(module, q, k, v, mask, scaling=0.25)
    other = torch.zeros_like(mask)  # no masking at all
    out, _ = grouped_attention(module, q, k, v, other, scaling=0.25)
    ref, _ = eager_attention_forward(module, q, k, v, other, scaling=0.25)
    torch.testing.assert_close(out, ref)
    mask.fill_(0.0)  # an in-place change to the cached mask is seen too
    out, _ = grouped_attention(module, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(out, ref)
    out, _ = grouped_attention(module, q, k, v, None, scaling=0.25)
    torch.testing.assert_close(out, ref)
    with torch.inference_mode():  # generation's masks are inference tensors (no version)
        inference_mask = torch.zeros_like(mask)
        out, _ = grouped_attention(module, q.detach(), k.detach(), v.detach(), inference_mask, 0.25)
    torch.testing.assert_close(out, ref)


def test_boolean_masks_mean_attend_where_true():
    module = _Module()
    (q, k, v), mask = _inputs(torch.float32)
    out, _ = grouped_attention(module, q, k, v, mask == 0, scaling=0.25)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_model_trains_and_generates_as_with_eager(arch):
    tok = make_tokenizer()
    examples = _varied_examples(tok, n=6)
    batch = collate(examples, tok.pad_token_id)
    packed = collate(pack_examples(examples, 256), tok.pad_token_id)
    assert batch.num_tokens < batch.input_ids.numel() and packed.position_ids is not None
    out = {}
    for name in ("eager", "grouped"):
        model = make_tiny_model(arch, vocab_size=len(tok), attn_implementation="eager").train()
        if name == "grouped":
            assert install(model).count == 1
        assert model.config._attn_implementation == (
            "eager" if name == "eager" else "tunesmith_cpu"
        )
        loss = loss_sum(model, batch) + loss_sum(model, packed)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        prompt = tok(["SELECT name FROM", "How many patients live in"], return_tensors="pt",
                     padding=True, padding_side="left")  # fmt: skip
        with torch.no_grad():
            gen = model.eval().generate(**prompt, max_new_tokens=8, do_sample=False)
        out[name] = (loss.detach(), grads, gen)
    torch.testing.assert_close(out["grouped"][0], out["eager"][0], rtol=1e-5, atol=1e-5)
    for n, g in out["eager"][1].items():
        torch.testing.assert_close(out["grouped"][1][n], g, rtol=1e-4, atol=1e-5)
    assert torch.equal(out["grouped"][2], out["eager"][2])  # KV-cache decoding agrees


def test_only_eager_models_with_plain_attention_are_switched():
    from transformers import Gemma2Config

    assert install(make_tiny_model("llama", attn_implementation="sdpa")).count == 0
    assert plain_attention(make_tiny_model("llama").config)
    assert not plain_attention(Gemma2Config())  # logit soft-capping
    with pytest.raises(NotImplementedError, match="soft-capping"):
        (q, k, v), mask = _inputs(torch.float32)
        grouped_attention(_Module(), q, k, v, mask, scaling=0.25, softcap=30.0)
    assert attention.register() == attention.NAME  # idempotent
