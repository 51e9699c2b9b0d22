"""Trainable-parameter and tensor counts of the method specs, exact against peft at full size.

The planner asks each method's spec (``count_trainable``, ``count_tensors``) and nothing else;
these checks pin the specs' formulas to peft applied to full-size architectures on the meta
device (no memory).
"""

from __future__ import annotations

import pytest

from tunesmith.methods import get_method, method_names
from tunesmith.methods.base import MethodArgs
from tunesmith.methods.targets import PRESETS, resolve_targets
from tunesmith.plan.configs import bundled_config
from tunesmith.shape import meta_model, model_shape


def _peft_lora(cfg, targets, rank, **kw):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        meta_model(cfg), LoraConfig(r=rank, target_modules=list(targets), **kw)
    )  # meta device: full size, no memory
    params = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() for p in params), len(params)


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b", "llama-3.1-8b", "gemma-2-2b"])
@pytest.mark.parametrize("preset", PRESETS)
def test_lora_presets_exact_against_peft(name, preset):
    cfg = bundled_config(name)
    targets = resolve_targets(preset, cfg)
    args = MethodArgs(rank=16, target=targets)
    n, n_tensors = _peft_lora(cfg, targets, 16)
    lora = get_method("lora")
    assert lora.count_trainable(cfg, args) == n
    assert lora.count_tensors(cfg, args) == n_tensors


def test_dora_adds_one_magnitude_per_output():
    cfg = bundled_config("smollm2-135m")
    targets = resolve_targets("attn", cfg)
    args = MethodArgs(rank=8, target=targets)
    n, n_tensors = _peft_lora(cfg, targets, 8, use_dora=True)
    dora = get_method("dora")
    assert dora.count_trainable(cfg, args) == n
    assert dora.count_tensors(cfg, args) == n_tensors


def test_gpt2_counts_come_from_the_meta_shape():
    """An architecture without closed formulas: measured on the meta device, still exact."""
    from transformers import GPT2Config

    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64)
    targets = resolve_targets("attn", cfg)  # c_attn and c_proj (both attention and MLP's)
    args = MethodArgs(rank=4, target=targets)
    n, n_tensors = _peft_lora(cfg, targets, 4)
    lora = get_method("lora")
    assert (lora.count_trainable(cfg, args), lora.count_tensors(cfg, args)) == (n, n_tensors)
    model = meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert get_method("full").count_trainable(cfg, args) == total == model_shape(cfg).total_params


@pytest.mark.parametrize("method", method_names())
def test_every_method_counts_positive_and_below_full(method):
    cfg = bundled_config("smollm2-135m")
    shape = model_shape(cfg)
    spec = get_method(method)
    n = spec.count_trainable(cfg, MethodArgs())
    assert 0 < n <= shape.total_params
    assert (n == shape.total_params) == spec.trains_lm_head
    assert 0 < spec.count_tensors(cfg, MethodArgs()) <= shape.tensors
