"""Trainable-parameter counts: exact against peft applied to the full-size architecture."""

from __future__ import annotations

import pytest

from tunesmith.methods.base import MethodArgs
from tunesmith.methods.targets import PRESETS, resolve_targets
from tunesmith.plan.configs import bundled_config
from tunesmith.plan.shapes import meta_model, model_shape
from tunesmith.plan.trainable import METHODS, count_tensors, count_trainable, fallback_count


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
    shape = model_shape(cfg)
    n, n_tensors = _peft_lora(cfg, targets, 16)
    assert count_trainable("lora", cfg, shape, args) == n
    assert fallback_count("lora", cfg, shape, args) == n
    assert count_tensors("lora", shape, args) == n_tensors


def test_dora_adds_one_magnitude_per_output():
    cfg = bundled_config("smollm2-135m")
    targets = resolve_targets("attn", cfg)
    args = MethodArgs(rank=8, target=targets)
    n, _ = _peft_lora(cfg, targets, 8, use_dora=True)
    assert count_trainable("dora", cfg, model_shape(cfg), args) == n
    assert fallback_count("dora", cfg, model_shape(cfg), args) == n


@pytest.mark.parametrize("method", METHODS)
def test_every_method_counts_positive_and_below_full(method):
    cfg = bundled_config("smollm2-135m")
    shape = model_shape(cfg)
    n = count_trainable(method, cfg, shape, MethodArgs())
    assert 0 < n <= shape.total_params
    assert (n == shape.total_params) == (method == "full")
