"""DoRA on the LoRA node against its reference, peft's own DoRA forward."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from tests.tiny import make_tiny_model
from tests.train.fastpath.conftest import adapter_step as _step
from tunesmith.methods import dora_norm
from tunesmith.train.fastpath import dora, native

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft(dtype=torch.float32, dropout=0.0, trained=True):
    torch.manual_seed(0)
    model = make_tiny_model().to(dtype)
    cfg = LoraConfig(
        r=4, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS, use_dora=True
    )
    model = get_peft_model(model, cfg)
    for name, p in model.named_parameters():
        p.data = p.data.float() if p.requires_grad else p.data  # adapters train in fp32
        if trained and "lora_B" in name:  # B starts at zero: give the branch something
            p.data.normal_(0, 0.05)
        if trained and "lora_magnitude" in name:  # and the magnitude moved from ||W||
            p.data.mul_(torch.empty_like(p).uniform_(0.8, 1.2))
    return model.train()


def _dora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def _count_scales(model, ids, monkeypatch, autocast) -> int:
    seen = []
    apply = dora.DoraScale.apply

    def counting(*args):
        seen.append(1)
        return apply(*args)

    monkeypatch.setattr(dora.DoraScale, "apply", counting)
    _step(model, ids, autocast)
    monkeypatch.undo()
    return len(seen)


@pytest.mark.parametrize(
    ("dtype", "autocast", "tol"),
    [(torch.float32, False, 1e-5), (torch.bfloat16, True, 3e-2)],
    ids=["fp32", "bf16-autocast"],
)
def test_loss_and_gradients_match_peft(monkeypatch, dtype, autocast, tol):
    ref = _peft(dtype)
    fast = copy.deepcopy(ref)
    patch = dora.install(fast)
    assert patch.count == 2 * len(TARGETS)
    ids = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = _step(ref, ids, autocast)
    loss, grads = _step(fast, ids, autocast)
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    # A, B and the magnitude of every projection: the magnitude's gradient is DoraScale's
    assert ref_grads.keys() == grads.keys() and len(grads) == 3 * 2 * len(TARGETS)
    for name, want in ref_grads.items():
        assert grads[name].dtype == want.dtype == torch.float32, name
        scale = want.abs().max().clamp_min(1e-6)
        assert float((grads[name] - want).abs().max() / scale) < tol * 5, name
    assert _count_scales(fast, ids, monkeypatch, autocast) == 2 * len(TARGETS)  # the fast nodes
    patch.undo()
    assert _count_scales(fast, ids, monkeypatch, autocast) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_norm_is_pefts_to_the_bit_at_the_start_and_scales_by_exactly_one(dtype):
    """B = 0: ``m / n`` must be exactly 1, or the adapted model starts off the base."""
    model = _peft(dtype, trained=False)
    dora.install(model)
    for layer in _dora_layers(model):
        base = layer.base_layer.weight
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        s = float(layer.scaling["default"])
        norm = dora_norm.weight_norm(layer, "default", dtype)
        magnitude = layer.lora_magnitude_vector["default"]
        want = magnitude.get_weight_norm(base, (b @ a).to(dtype), s)
        assert torch.equal(norm, want.float())
        assert torch.equal(magnitude.weight / norm, torch.ones_like(norm))


def test_the_norm_follows_the_weights_after_an_optimizer_step():
    model = _peft()
    dora.install(model)
    layer = _dora_layers(model)[4]
    base, a = layer.base_layer.weight, layer.lora_A["default"].weight
    b, s = layer.lora_B["default"].weight, float(layer.scaling["default"])
    first = dora_norm.weight_norm(layer, "default", torch.float32)
    assert dora_norm.weight_norm(layer, "default", torch.float32) is first  # kept: no change
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids = torch.randint(0, 512, (2, 13), generator=torch.Generator().manual_seed(3))
    _step(model, ids, autocast=False)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    opt.step()
    after = dora_norm.weight_norm(layer, "default", torch.float32)
    want = torch.linalg.norm(base + s * (b @ a), dim=1)
    assert not torch.equal(after, first)
    torch.testing.assert_close(after, want, rtol=2e-6, atol=0)


def test_dropout_and_no_grad_keep_pefts_forward_and_undo_restores():
    with_dropout = _peft(dropout=0.1)
    patch = dora.install(with_dropout)
    assert patch.count == 0 and "dropout" in patch.skipped
    ref = _peft()
    fast = copy.deepcopy(ref)
    keys = list(fast.state_dict())
    patch = dora.install(fast)
    assert all(type(m).__name__ == "FastDoraEvalLinear" for m in _dora_layers(fast))
    assert list(fast.state_dict()) == keys  # saved adapters are unchanged
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        fast.eval(), ref.eval()  # the evaluation forward (tests/methods/test_dora_norm.py)
        want = ref(input_ids=ids).logits
        torch.testing.assert_close(fast(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    patch.undo()
    layers = _dora_layers(fast)
    assert all(type(m) is LoraLinear and dora_norm.ATTR not in m.__dict__ for m in layers)
    merged = fast.merge_and_unload().state_dict()  # peft's merge, the class given back
    want = ref.merge_and_unload().state_dict()
    assert all(torch.equal(merged[k], want[k]) for k in want)


@pytest.mark.parametrize("width", [576, 200, 7], ids=["blocks", "tails", "narrow"])
def test_the_column_scale_kernel_is_the_fp32_formula_rounded_once(cpu_kernels, width):
    if cpu_kernels is None:
        pytest.skip("tunesmith's CPU kernels are not built here")
    gen = torch.Generator().manual_seed(width)
    y = torch.randn(37, width, generator=gen).bfloat16()
    g = torch.randn(37, width, generator=gen).bfloat16()
    c = torch.rand(width, generator=gen) + 0.5
    assert torch.equal(cpu_kernels.dora_scale(y, c), (y.float() * c).bfloat16())
    dy, sums = cpu_kernels.dora_scale_backward(g, y, c, True)
    assert torch.equal(dy, (g.float() * c).bfloat16())
    want = (g.double() * y.double()).sum(0)
    torch.testing.assert_close(sums.double(), want, rtol=1e-5, atol=1e-5)
    empty, again = cpu_kernels.dora_scale_backward(g, y, c, False)
    assert empty.numel() == 0 and torch.equal(again, sums)


def test_the_bf16_step_takes_the_kernel_and_equals_the_torch_ops(monkeypatch, cpu_kernels):
    if cpu_kernels is None:
        pytest.skip("tunesmith's CPU kernels are not built here")
    model = _peft(torch.bfloat16)
    dora.install(model)
    ids = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(4))
    calls = []
    real = native.kernels

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real(), name)

    monkeypatch.setattr(native, "kernels", lambda: Counting())
    loss, grads = _step(model, ids, autocast=True)
    assert calls.count("dora_scale") == calls.count("dora_scale_backward") == 2 * len(TARGETS)
    monkeypatch.setattr(native, "kernels", lambda: None)  # torch's ops, the same formula
    want_loss, want_grads = _step(model, ids, autocast=True)
    torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=1e-3)
    for name, want in want_grads.items():
        scale = want.abs().max().clamp_min(1e-6)
        assert float((grads[name] - want).abs().max() / scale) < 2e-2, name
