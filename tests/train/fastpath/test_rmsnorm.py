"""The fused RMSNorm against its reference, transformers' own LlamaRMSNorm.forward."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tests.tiny import make_tiny_model
from tunesmith.train.fastpath.rmsnorm import install, rms_norm, why_not_llama_formula


def _norm(dtype, hidden=96, weight_grad=False):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    norm.weight.data.normal_(1.0, 0.2)
    norm.weight.requires_grad_(weight_grad)
    return norm


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_matches_transformers_forward_and_backward(dtype, weight_grad):
    norm = _norm(dtype, weight_grad=weight_grad)
    x = (torch.randn(3, 17, 96) * 3).to(dtype).requires_grad_()
    g = torch.randn(3, 17, 96).to(dtype)
    ref = norm(x)
    ref_grads = torch.autograd.grad(ref, [x, norm.weight] if weight_grad else [x], g)
    out = rms_norm(x, norm.weight, norm.variance_epsilon)
    grads = torch.autograd.grad(out, [x, norm.weight] if weight_grad else [x], g)
    assert out.dtype == dtype
    if dtype == torch.bfloat16:  # the same roundings in the forward: bit for bit
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # The reference rounds g * w to bf16 before its fp32 backward; this does not: one bf16
    # rounding of difference at most (values here are up to ~5, bf16 spacing there 1/32).
    tol = {torch.bfloat16: dict(rtol=1e-2, atol=1e-2), torch.float32: dict(rtol=1e-5, atol=1e-5)}
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), **tol[dtype])


def test_gradient_against_fp64_is_no_worse_than_the_reference():
    norm = _norm(torch.bfloat16)
    x = (torch.randn(4, 33, 96) * 2).to(torch.bfloat16).requires_grad_()
    g = torch.randn(4, 33, 96).to(torch.bfloat16)
    exact_norm = _norm(torch.float64)
    exact_norm.weight.data.copy_(norm.weight.data.double())
    x64 = x.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(exact_norm(x64), x64, g.double())
    (ref,) = torch.autograd.grad(norm(x), x, g)
    (fast,) = torch.autograd.grad(rms_norm(x, norm.weight, 1e-5), x, g)
    assert (fast.double() - exact).abs().mean() <= (ref.double() - exact).abs().mean()


def test_install_changes_llama_norms_only_and_keeps_class_weights_and_keys():
    model = make_tiny_model("llama", vocab_size=64)
    keys = set(model.state_dict())
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert install(model).count == 2 * 2 + 1  # two per layer, the final norm
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert all(isinstance(m, LlamaRMSNorm) and type(m) is not LlamaRMSNorm for m in norms)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    assert install(model).count == 0  # already fused: nothing left to change
    clone = pickle.loads(pickle.dumps(model))  # the fused class is importable by name
    assert type(clone.model.norm) is type(model.model.norm)


class GemmaStyleRMSNorm(LlamaRMSNorm):
    """``(1 + weight)``, as Gemma writes it; weight ones at init, like Llama's."""

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (
            (1 + self.weight.float()) * x.float() * torch.rsqrt(var + self.variance_epsilon)
        ).to(x.dtype)


class RewrittenRMSNorm(LlamaRMSNorm):
    """The Llama formula in other words: its source text differs, its math does not."""

    def forward(self, hidden_states):
        rms = hidden_states.float().square().mean(dim=-1, keepdim=True).add(self.variance_epsilon)
        return self.weight * (hidden_states.float() / rms.sqrt()).to(hidden_states.dtype)


def test_the_probe_judges_the_formula_not_the_name_or_the_source_text():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    assert why_not_llama_formula(LlamaRMSNorm(32)) is None
    assert why_not_llama_formula(Qwen2RMSNorm(32)) is None  # copied from Llama's
    assert why_not_llama_formula(RewrittenRMSNorm(32)) is None
    assert "not the Llama formula" in why_not_llama_formula(GemmaStyleRMSNorm(32))
    assert why_not_llama_formula(GemmaRMSNorm(32)) is not None  # its own eps attribute
    assert why_not_llama_formula(torch.nn.LayerNorm(32)) is not None


def test_install_fuses_what_passes_the_probe_and_says_what_does_not():
    model = make_tiny_model("llama", vocab_size=64)
    layer0 = model.model.layers[0]
    layer0.input_layernorm.__class__ = GemmaStyleRMSNorm
    layer0.post_attention_layernorm.__class__ = RewrittenRMSNorm
    patch = install(model)
    assert patch.count == 4 and not patch.expected  # 3 Llama norms + the rewritten one
    assert "GemmaStyleRMSNorm" in patch.skipped and "not the Llama formula" in patch.skipped
    assert type(layer0.input_layernorm) is GemmaStyleRMSNorm
    assert isinstance(layer0.post_attention_layernorm, RewrittenRMSNorm)
    patch.undo()
    assert type(layer0.post_attention_layernorm) is RewrittenRMSNorm
    assert type(model.model.norm) is LlamaRMSNorm


def test_fp32_master_weight_with_bf16_activations_as_in_full_fine_tuning():
    """full/freeze keep fp32 weights and run under autocast: the norm sees bf16 inputs."""
    norm = _norm(torch.float32, weight_grad=True)
    x = (torch.randn(2, 9, 96) * 3).to(torch.bfloat16).requires_grad_()
    g = torch.randn(2, 9, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = norm(x)
        out = rms_norm(x, norm.weight, norm.variance_epsilon)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    ref_grads = torch.autograd.grad(ref, (x, norm.weight), g)
    grads = torch.autograd.grad(out, (x, norm.weight), g)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


class _MixedDtypeOps(TorchDispatchMode):
    """Records every dispatched op whose floating-point tensor operands differ in dtype."""

    def __init__(self):
        super().__init__()
        self.mixed = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
        if len(dtypes) > 1:
            self.mixed.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_bf16_forward_and_backward_run_no_mixed_dtype_op():
    """A bf16 x fp32 op first copies its bf16 operand to a new fp32 tensor on CPU: the fused
    norm upcasts once per direction instead."""
    norm = _norm(torch.bfloat16)
    x = (torch.randn(2, 9, 96) * 3).to(torch.bfloat16).requires_grad_()
    g = torch.randn(2, 9, 96).to(torch.bfloat16)
    with _MixedDtypeOps() as seen:
        torch.autograd.grad(rms_norm(x, norm.weight, norm.variance_epsilon), x, g)
    assert seen.mixed == []


def test_an_fp32_incoming_gradient_is_left_as_it_was():
    norm = _norm(torch.float32)
    x = torch.randn(2, 9, 96).requires_grad_()
    g = torch.randn(2, 9, 96)
    kept = g.clone()
    torch.autograd.grad(rms_norm(x, norm.weight, norm.variance_epsilon), x, g)
    assert torch.equal(g, kept)
