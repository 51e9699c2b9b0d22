"""Seeded sampling in eval/generate.py: reproducible per seed, greedy stays the default."""

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.eval.generate import SamplingSettings, generate
from tunesmith.methods import MethodArgs, get_method

PROMPTS = ["count the patients", "which city", "List the doctors"] * 2


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer()
    return make_tiny_model("llama", vocab_size=len(tok)), tok


def _texts(model, tok, prompts=PROMPTS, **kw):
    return [g.text for g in generate(model, tok, prompts, max_new_tokens=12, **kw)]


def test_same_seed_same_samples_other_seed_other_samples(tiny):
    model, tok = tiny
    first = _texts(model, tok, sampling=SamplingSettings(seed=3))
    assert _texts(model, tok, sampling=SamplingSettings(seed=3)) == first
    assert _texts(model, tok, sampling=SamplingSettings(seed=4)) != first
    # Copies of one prompt in one batch draw apart (the K samples of on-policy mining).
    assert len(set(first[::3])) > 1 or len(set(first[1::3])) > 1


def test_sampling_leaves_the_callers_random_state_alone(tiny):
    model, tok = tiny
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    _texts(model, tok, sampling=SamplingSettings(seed=0))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_is_the_default_and_matches_argmax_decoding(tiny):
    model, tok = tiny
    greedy = _texts(model, tok)
    assert _texts(model, tok) == greedy
    # A near-zero temperature samples the argmax: the greedy answers.
    assert _texts(model, tok, sampling=SamplingSettings(temperature=1e-6)) == greedy
    # top-p that keeps only the most likely token is greedy too, at any temperature.
    assert _texts(model, tok, sampling=SamplingSettings(top_p=1e-9, seed=5)) == greedy


def test_prefix_path_samples_with_the_seed(tiny):
    _, tok = tiny
    model = get_method("prefix").apply(
        make_tiny_model("llama", vocab_size=len(tok)), MethodArgs(num_virtual_tokens=4, target=())
    )
    one = _texts(model, tok, PROMPTS[:2], sampling=SamplingSettings(seed=1))
    assert _texts(model, tok, PROMPTS[:2], sampling=SamplingSettings(seed=1)) == one
    assert _texts(model, tok, PROMPTS[:2], sampling=SamplingSettings(seed=2)) != one
    greedy = _texts(model, tok, PROMPTS[:2])
    assert _texts(model, tok, PROMPTS[:2], sampling=SamplingSettings(top_p=1e-9)) == greedy


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(top_p=0), dict(top_p=1.5)])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
