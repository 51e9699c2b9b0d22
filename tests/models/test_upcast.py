"""fp32 arithmetic from 16-bit resident weights equals the fp32 model's, and leaves the weights as they were."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.export.adapters import IDS, make_adapter
from tunesmith.models.upcast import fp32_compute


def _adapted(base_dir, adapter_dir, dtype):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_bf16_weights_compute_exactly_as_the_fp32_model(tiny_llama_dir, tmp_path, method):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", method)
    narrow = _adapted(tiny_llama_dir, adapter, torch.bfloat16)
    # The fp32 reference holds the same values: the bf16 weights widened (exactly).
    wide = _adapted(tiny_llama_dir, adapter, torch.bfloat16).float()
    before = {n: (p.dtype, p.data_ptr()) for n, p in narrow.named_parameters()}
    with torch.inference_mode():
        expected = wide(input_ids=IDS).logits
        with fp32_compute(narrow):
            got = narrow(input_ids=IDS).logits
        plain = narrow(input_ids=IDS).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (plain.float() - expected).abs().max() > 1e-4  # bf16 arithmetic really differs
    after = {n: (p.dtype, p.data_ptr()) for n, p in narrow.named_parameters()}
    assert after == before  # every weight is back in its own 16-bit storage
    assert any(dtype == torch.bfloat16 for dtype, _ in after.values())


def test_hooks_are_removed_after_the_block(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).eval()
    with fp32_compute(model):
        pass
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    with torch.inference_mode():
        assert model(input_ids=IDS).logits.dtype == torch.bfloat16
