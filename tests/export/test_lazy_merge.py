"""The streamed merge: every tensor equals merge_and_unload's in fp32, one layer at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.export.adapters import make_adapter
from tunesmith.errors import WorkFailed
from tunesmith.export.lazy_merge import merged_tensors


def _adapted(base_dir, adapter_dir, dtype=torch.float32, **kw):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **kw)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "ia3"])
def test_each_tensor_equals_the_whole_model_merge(base_dir, tmp_path, method):
    adapter = make_adapter(base_dir, tmp_path / "adapter", method)
    adapted = _adapted(base_dir, adapter, torch.bfloat16)  # 16-bit resident, as export holds it
    widened = _adapted(base_dir, adapter, torch.bfloat16).float()
    expected = widened.merge_and_unload(safe_merge=True).state_dict()
    tensors = merged_tensors(adapted)
    assert list(tensors.shapes()) == list(expected)
    for name, want in expected.items():
        got = tensors.tensor(name)
        assert got.dtype == torch.float32 and tuple(got.shape) == tensors.shapes()[name]
        assert torch.equal(got, want.float()), name
    # the adapted model is untouched: still unmerged, still 16-bit
    assert not any(getattr(m, "merged", False) for m in adapted.modules())
    assert next(adapted.get_base_model().parameters()).dtype == torch.bfloat16


def test_a_nan_in_the_adapter_is_refused_naming_the_tensor(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "lora", nan=True)
    tensors = merged_tensors(_adapted(tiny_llama_dir, adapter))
    with pytest.raises(WorkFailed, match="merge failed|NaN"):
        for name in tensors.shapes():
            tensors.tensor(name)


def test_qlora_layers_fold_into_the_dequantized_4bit_base(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tunesmith.methods.qlora import dequantize
    from tunesmith.methods.qlora import quantization_config as qlora_quantization_config

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "qlora")
    qc = qlora_quantization_config()
    streamed = merged_tensors(_adapted(tiny_llama_dir, adapter, quantization_config=qc))
    from peft import PeftModel

    # load_merged's order: the 4-bit base dequantized to fp32 first, then the adapter folded in.
    base = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, quantization_config=qc
    )
    whole = PeftModel.from_pretrained(dequantize(base), str(adapter))
    expected = whole.merge_and_unload(safe_merge=True).state_dict()
    assert list(streamed.shapes()) == list(expected)
    for name, want in expected.items():
        torch.testing.assert_close(streamed.tensor(name), want.float(), rtol=0, atol=1e-6)


def test_a_4bit_model_that_already_ran_on_cpu_is_not_folded_from_its_repacked_weights(
    tiny_llama_dir, tmp_path
):
    pytest.importorskip("bitsandbytes")
    from tunesmith.export.lazy_merge import NotStreamable
    from tunesmith.methods.qlora import quantization_config as qlora_quantization_config

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", "qlora")
    model = _adapted(tiny_llama_dir, adapter, quantization_config=qlora_quantization_config())
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    layers = [
        m for m in model.modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "weight")
    ]
    repacked = any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    if not repacked:
        pytest.skip("this bitsandbytes build keeps the loaded 4-bit layout on CPU")
    with pytest.raises(NotStreamable, match="repacked"):
        merged_tensors(model)
