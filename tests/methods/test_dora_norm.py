"""DoRA's kept weight norm and the evaluation forward against peft's own DoRA forward."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from tests.tiny import make_tiny_model
from tunesmith.methods import dora_norm

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _dora(dtype, adapters=("default",)):
    torch.manual_seed(0)
    model = make_tiny_model().to(dtype)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, use_dora=True)
    model = get_peft_model(model, cfg, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, cfg)
    for name, p in model.named_parameters():  # a trained adapter: B and m away from the start
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
        if "lora_magnitude" in name:
            p.data.mul_(torch.empty_like(p).uniform_(0.8, 1.2))
    return model.eval()


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"]
)
def test_evaluation_forward_matches_pefts_and_keeps_the_norm(monkeypatch, dtype, tol):
    ref = _dora(dtype)
    fast = copy.deepcopy(ref)
    assert dora_norm.install(fast) == 2 * len(TARGETS)
    assert dora_norm.install(fast) == 0  # idempotent
    ids = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(input_ids=ids).logits.float()
        norms = []
        real = dora_norm.WeightNorm.get
        monkeypatch.setattr(dora_norm.WeightNorm, "get", lambda *a: norms.append(1) or real(*a))
        got = fast(input_ids=ids).logits.float()
        fast(input_ids=ids[:, :5])
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert len(norms) == 2 * 2 * len(TARGETS)  # every call reads it ...
    with_grad = fast(input_ids=ids).logits  # evaluation with gradients on: out of place
    torch.testing.assert_close(with_grad.detach().float(), got, rtol=1e-6, atol=1e-6)
    computed = {
        id(n._norm) for m in fast.modules() for n in m.__dict__.get(dora_norm.ATTR, {}).values()
    }
    assert len(computed) == 2 * len(TARGETS)  # ... computed once per projection


def test_training_other_adapters_and_merging_stay_pefts():
    ref = _dora(torch.float32, adapters=("default", "other"))
    fast = copy.deepcopy(ref)
    dora_norm.install(fast)
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(2))
    for model in (ref, fast):
        model.base_model.set_adapter(["default", "other"])  # two active: peft's
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        for model in (ref, fast):
            model.base_model.set_adapter("other")
            model.train()  # training: peft's
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        ref.eval(), fast.eval()
        for name in ("other", "default"):  # each adapter its own norms
            for model in (ref, fast):
                model.base_model.set_adapter(name)
            want = ref(input_ids=ids).logits
            torch.testing.assert_close(fast(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        with ref.disable_adapter(), fast.disable_adapter():
            assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
    layers = [m for m in fast.modules() if isinstance(m, LoraLinear)]
    assert all(type(m).__name__ == "DoraEvalLinear" for m in layers)
    for m in layers:  # an offloaded base (accelerate's hook brings its weight in): peft's
        m.base_layer._hf_hook = object()
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
    for m in layers:
        del m.base_layer._hf_hook
    merged, want = fast.merge_and_unload().state_dict(), ref.merge_and_unload().state_dict()
    assert merged.keys() == want.keys() and all(torch.equal(merged[k], want[k]) for k in want)
