"""Every method's formula against the real SmolLM2-135M-Instruct (tied embeddings, GQA)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.methods import MethodArgs, get_method, method_names
from tunesmith.plan.configs import load_model_config
from tunesmith.shape import model_shape

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


def test_formulas_match_the_embedded_model():
    from tunesmith.models import load_model_and_tokenizer

    args = MethodArgs()
    counted = {}
    for name in method_names():
        spec = get_method(name)
        qconf = None
        if spec.quantized_base:
            from tunesmith.methods.qlora import quantization_config

            qconf = quantization_config()
        model, _, _ = load_model_and_tokenizer(
            "embedded", dtype=torch.float32, quantization_config=qconf
        )
        # the planner's bundled config of the embedded model has its shape
        assert model_shape(model.config) == model_shape(load_model_config("embedded"))
        model = spec.apply(model, args)
        counted[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert counted[name] == spec.count_trainable(model.config, args), name
    assert counted["full"] == 134_515_008
