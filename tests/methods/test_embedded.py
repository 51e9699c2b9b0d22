"""Every method's formula against the real SmolLM2-135M-Instruct (tied embeddings, GQA)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.methods import MethodArgs, get_method, method_names
from tunesmith.methods.geometry import SMOLLM2_135M, geometry

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
        assert geometry(model.config) == geometry(SMOLLM2_135M)  # the table's built-in config
        model = spec.apply(model, args)
        counted[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert counted[name] == spec.count_trainable(model.config, args), name
    assert counted["full"] == 134_515_008
