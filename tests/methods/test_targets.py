"""Target-module presets per architecture family and fixed method positions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.tiny import make_tiny_model
from tunesmith.errors import ConfigError
from tunesmith.methods.targets import check_targets_exist, position_modules, resolve_targets


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_llama_style_presets(family):
    cfg = SimpleNamespace(model_type=family)
    assert resolve_targets("attn-qv", cfg) == ("q_proj", "v_proj")
    assert resolve_targets("mlp", cfg) == ("gate_proj", "up_proj", "down_proj")
    assert len(resolve_targets("all-linear", cfg)) == 7


def test_gpt2_presets_and_positions():
    cfg = SimpleNamespace(model_type="gpt2")
    assert resolve_targets("attn-qv", cfg) == ("c_attn",)
    assert position_modules("ffn-out", cfg) == ("mlp.c_proj",)


def test_explicit_lists_and_comma_lists_pass_through():
    cfg = SimpleNamespace(model_type="llama")
    assert resolve_targets(["o_proj"], cfg) == ("o_proj",)
    assert resolve_targets("q_proj, k_proj", cfg) == ("q_proj", "k_proj")
    with pytest.raises(ConfigError, match="target"):
        resolve_targets(" , ", cfg)


def test_missing_targets_are_named_before_training():
    model = make_tiny_model("llama")
    check_targets_exist(model, ("q_proj", "down_proj"))
    with pytest.raises(ConfigError, match="c_attn"):
        check_targets_exist(model, ("q_proj", "c_attn"))
