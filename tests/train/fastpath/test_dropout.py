"""FastDropout against its reference, torch.nn.Dropout: keep rate, scale, backward, eval, install."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunesmith.train.fastpath.dropout import FastDropout, _words, install, keep_mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_is_one_minus_p(dtype, p):
    torch.manual_seed(0)
    n = 400_000
    mask = keep_mask(torch.Size([n]), p, dtype, "cpu")
    assert mask.dtype == dtype
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    dropped = 1.0 - mask.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped - p) < 5 * sigma + 2**-15


def test_mask_words_are_splitmix64():
    # The published generator's first outputs from state 0 (and from 1234567): the words are
    # splitmix64 of seed + (w + 1) * gamma, as the kernels compute them.
    want = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [w & (2**64 - 1) for w in _words(0, 3, "cpu").tolist()] == want
    assert _words(1234567, 1, "cpu").item() & (2**64 - 1) == 0x599ED017FB08FC85


def test_masks_follow_torch_manual_seed():
    torch.manual_seed(7)
    a = keep_mask(torch.Size([1000]), 0.3, torch.bfloat16, "cpu")
    b = keep_mask(torch.Size([1000]), 0.3, torch.bfloat16, "cpu")
    torch.manual_seed(7)
    assert torch.equal(keep_mask(torch.Size([1000]), 0.3, torch.bfloat16, "cpu"), a)
    assert not torch.equal(a, b)  # each mask its own seed


def test_lanes_are_independent_of_their_position_in_a_word():
    # Four mask elements share one 64-bit word (its 16-bit lanes, low 15 bits each); a bias in
    # one lane would show as a different drop rate at positions 3, 7, 11, ...
    torch.manual_seed(1)
    mask = keep_mask(torch.Size([4 * 200_000]), 0.1, torch.bfloat16, "cpu").float().view(-1, 4)
    rates = 1.0 - mask.mean(dim=0)
    assert torch.allclose(rates, torch.full((4,), 0.1), atol=0.004)
    # ...and neighbours are not correlated.
    both = (1 - mask[:, 0]) * (1 - mask[:, 3])
    assert abs(both.mean().item() - 0.01) < 0.002


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_output_and_gradient_are_the_reference_rounding(dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 33, 64, dtype=dtype, requires_grad=True)
    drop = FastDropout(0.1)
    y = drop(x)
    kept = y != 0
    scale = 1.0 / 0.9
    # Kept elements are x * scale rounded as torch.nn.Dropout rounds them (x * mask * scale).
    assert torch.equal(y[kept], (x * scale)[kept].detach())
    assert 0.85 < kept.float().mean().item() < 0.95
    g = torch.randn_like(y)
    y.backward(g)
    expected = torch.where(kept, g * scale, torch.zeros_like(g))
    assert torch.equal(x.grad, expected)


def test_matches_reference_in_expectation_and_in_eval_mode():
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    fast, ref = FastDropout(0.2), nn.Dropout(0.2)
    mean_fast = torch.stack([fast(x) for _ in range(400)]).mean(0)
    mean_ref = torch.stack([ref(x) for _ in range(400)]).mean(0)
    # Both are unbiased: E[dropout(x)] = x (per-element std of the mean: |x| * 0.5 / 20).
    assert (mean_fast - x).abs().mean() < 0.03
    assert (mean_ref - x).abs().mean() < 0.03
    fast.eval()
    assert torch.equal(fast(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))


def test_same_seed_same_mask():
    x = torch.ones(1000, dtype=torch.bfloat16)
    torch.manual_seed(7)
    a = FastDropout(0.3)(x)
    torch.manual_seed(7)
    b = FastDropout(0.3)(x)
    assert torch.equal(a, b)


def test_install_swaps_peft_lora_dropout_and_keeps_the_adapter_state():
    from peft import LoraConfig, get_peft_model

    from tests.tiny import make_tiny_model

    model = get_peft_model(
        make_tiny_model("llama", vocab_size=64),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
    )
    keys_before = set(model.state_dict())
    assert install(model).count == 4  # q and v in 2 layers
    assert set(model.state_dict()) == keys_before
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert len(drops) == 4 and all(type(m) is FastDropout and m.p == 0.1 for m in drops)
    ids = torch.randint(0, 64, (2, 9))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():  # in eval mode the dropout is the identity, as peft's own
        out = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert torch.allclose(out, base)  # lora_B starts at zero
