"""The objectives across the method table: refusals, and the reference without a second copy."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.config import TrainConfig, make_config
from tunesmith.errors import UserInputError
from tunesmith.methods import MethodArgs, get_method, method_names
from tunesmith.objectives import OBJECTIVES, PairIds, collate_pairs, reference_logps, sequence_logps
from tunesmith.train.preflight import check_objective


def test_config_objectives_are_the_registry():
    from typing import get_args

    assert set(get_args(TrainConfig.model_fields["objective"].annotation)) == set(OBJECTIVES)


@pytest.mark.parametrize("name", method_names())
def test_refused_methods_say_why_and_the_rest_pass(name):
    spec = get_method(name)
    cfg = make_config({"method": name, "objective": "dpo"})
    if spec.preference_refusal:
        with pytest.raises(UserInputError, match="does not work with --method"):
            check_objective(cfg, spec)
    else:
        check_objective(cfg, spec)
    check_objective(make_config({"method": name}), spec)  # sft: every method


@pytest.mark.parametrize(
    ("objective", "given", "takes"),
    [("orpo", {"sft-weight": 1.0}, "--beta"), ("sft", {"beta": 0.2}, "no preference parameters")],
)
def test_another_objectives_parameter_is_refused_before_loading(objective, given, takes):
    from tunesmith.errors import ConfigError

    cfg = make_config({"objective": objective, **given})
    with pytest.raises(ConfigError, match=f"--objective {objective} takes {takes}") as err:
        check_objective(cfg, get_method("lora"))
    assert err.value.key == next(iter(given))
    check_objective(
        make_config({"objective": "dpo", "beta": 0.2, "sft-weight": 1.0}), get_method("lora")
    )


def _weight_methods():
    return [
        n
        for n in method_names()
        if not get_method(n).preference_refusal
        and not get_method(n).trains_base_weights
        and not get_method(n).quantized_base  # needs bitsandbytes' 4-bit kernels
    ]


@pytest.mark.parametrize("name", _weight_methods())
def test_adapter_off_is_the_base_model(name):
    """For every PEFT method a preference objective runs with, the reference pass (adapter off)
    scores exactly as the untouched base, while the trained policy does not."""
    tok = make_tokenizer()
    base = make_tiny_model(vocab_size=len(tok))
    batch = collate_pairs(
        [
            PairIds(
                tok("How many patients?").input_ids,
                tok(" SELECT 1;").input_ids,
                tok(" SELECT 2;").input_ids,
            )
        ],
        pad_id=tok.pad_token_id,
    )
    with torch.no_grad():
        expected = sequence_logps(base, batch).total
    model = get_method(name).apply(base, MethodArgs(rank=4, alpha=8, dropout=0.0, bottleneck=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    ref = reference_logps(model, batch).total
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(sequence_logps(model, batch).total, expected, atol=1e-4)
