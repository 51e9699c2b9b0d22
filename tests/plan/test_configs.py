"""Bundled configs and --model resolution: exact parameter counts against meta instantiation."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import UserInputError
from tunesmith.plan.configs import BUNDLED, bundled_config, load_model_config
from tunesmith.shape import _from_meta, model_shape

# Totals published on the model cards (rounded there; exact here from the configs).
PUBLISHED = {
    "llama-2-7b": 6_738_415_616,
    "llama-3.1-8b": 8_030_261_248,
    "qwen2.5-7b": 7_615_616_512,
    "mistral-7b": 7_241_732_096,
    "smollm2-135m": 134_515_008,
    "gemma-2-2b": 2_614_341_888,
}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_closed_form_counts_equal_meta_instantiation(name):
    cfg = bundled_config(name)
    closed, meta = model_shape(cfg), _from_meta(cfg)
    assert closed == meta  # every group: block linears, embeddings, lm_head, norms/biases
    if name in PUBLISHED:
        assert closed.total_params == PUBLISHED[name]


def test_meta_count_of_a_real_tiny_model_equals_its_parameters(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = load_model_config(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert model_shape(cfg).total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "spec, key",
    [
        ("embedded", "smollm2-135m"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("meta-llama/Llama-2-13b-hf", "llama-2-13b"),
        ("LLAMA-2-13B", "llama-2-13b"),
    ],
)
def test_names_and_hub_ids_resolve_offline(spec, key):
    assert model_shape(load_model_config(spec)) == model_shape(bundled_config(key))


def test_local_config_json_and_directory(tiny_qwen2_dir, tmp_path):
    from_dir = load_model_config(str(tiny_qwen2_dir))
    raw = json.loads((tiny_qwen2_dir / "config.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    from_file = load_model_config(str(path))
    assert model_shape(from_dir) == model_shape(from_file)
    assert from_dir.model_type == "qwen2"


@pytest.mark.parametrize("spec", ["no-such-model", "nobody/not-cached-anywhere", "x.gguf"])
def test_unknown_or_uncached_model_fails_clearly(spec):
    with pytest.raises(UserInputError, match="model"):
        load_model_config(spec)
