"""Frozen ``nn.Linear`` layers through the row-split products, against ``F.linear``."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tests.tiny import make_tiny_model
from tunesmith.train.fastpath import frozen_linear, row_split
from tunesmith.train.fastpath.frozen_linear import FrozenLinearFn, install


@pytest.fixture
def split(monkeypatch):
    """Tiny products qualify and are cut into 16-row blocks; a fresh per-test choice table."""
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setattr(row_split, "_measure", lambda a, b: 16)
    monkeypatch.setattr(row_split, "_SPLITS", row_split.RowSplits(None))


def _frozen(dtype, bias=True):
    torch.manual_seed(0)
    layer = nn.Linear(48, 40, bias=bias).to(dtype)
    layer.requires_grad_(False)
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_output_and_input_gradient_match_f_linear(split, dtype, tol, bias):
    ref = _frozen(dtype, bias)
    fast = copy.deepcopy(ref)
    assert install(fast).count == 1
    x = torch.randn(3, 21, 48).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, want = fast(input=x), ref(x_ref)  # nn.Linear's own argument name works
    assert type(out.grad_fn).__name__ == "FrozenLinearFnBackward"
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    g = torch.randn_like(want)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=tol, atol=tol)
    assert fast.weight.grad is None  # frozen: no weight gradient is ever built


@pytest.mark.parametrize("bias", [True, False])
def test_through_the_amx_kernel_output_and_input_gradient_match_f_linear(
    monkeypatch, cpu_kernels, bias
):
    """Forward ``x W^T`` (+ bias) and backward ``g W`` both in the AMX kernel (bf16, K and N
    multiples of 32), as a model of 576-wide layers takes them on an AMX CPU."""
    if cpu_kernels is None or not row_split.native.amx():
        pytest.skip("no AMX-BF16 tiles, or tunesmith's CPU kernels are not built")
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setattr(row_split, "_measure", lambda a, b: row_split.AMX)
    monkeypatch.setattr(row_split, "_SPLITS", row_split.RowSplits(None))
    torch.manual_seed(0)
    ref = nn.Linear(64, 96, bias=bias).to(torch.bfloat16).requires_grad_(False)
    fast = copy.deepcopy(ref)
    install(fast)
    x = torch.randn(3, 21, 64).to(torch.bfloat16).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, want = fast(x), ref(x_ref)
    assert row_split.splits().height(x.view(-1, 64), fast.weight.t()) == row_split.AMX
    g = torch.randn_like(want)
    out.backward(g)
    want.backward(g)
    for got, expected in ((out, want), (x.grad, x_ref.grad)):
        torch.testing.assert_close(
            got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item()
        )

    from tunesmith.bench.train.gemm_limit import record_gemms

    def step():
        fast(x).backward(g)

    assert not record_gemms(step)  # both products in the kernel: nothing dispatched
    with row_split.through_torch():  # as the bench records a step: forward and backward seen
        assert sum(record_gemms(step).values()) == 2


def test_without_cuts_it_is_f_linear_bit_for_bit(monkeypatch, split):
    monkeypatch.setenv(row_split.ENV, "0")
    ref = _frozen(torch.bfloat16)
    fast = copy.deepcopy(ref)
    install(fast)
    x = torch.randn(64, 48).to(torch.bfloat16).requires_grad_()
    assert torch.equal(fast(x), ref(x))


def test_small_inputs_mixed_dtypes_and_no_grad_take_the_plain_forward(split):
    layer = _frozen(torch.float32)
    install(layer)
    x = torch.randn(2, 48, requires_grad=True)  # 2 rows: below MIN_ROWS (8 here)
    assert type(layer(x).grad_fn).__name__ == "AddmmBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # F.linear's casts decide
        assert layer(torch.randn(32, 48, requires_grad=True)).dtype == torch.bfloat16
    x = torch.randn(32, 48)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert layer(x).grad_fn is None  # nothing to differentiate: no graph node


def test_installs_on_frozen_linears_only_and_undoes_exactly():
    model = get_peft_model(
        make_tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    patch = install(model)
    fast = [m for m in model.modules() if type(m) is not nn.Linear and isinstance(m, nn.Linear)]
    # 2 layers x 7 projections (the LoRA ones through their base layers) + the head.
    assert patch.count == len(fast) == 2 * 7 + 1
    assert all(not p.requires_grad for m in fast for p in m.parameters())
    adapters = [
        m for n, m in model.named_modules() if n.endswith(("lora_A.default", "lora_B.default"))
    ]
    assert adapters and all(type(m) is nn.Linear for m in adapters)  # they train: left alone
    pickle.loads(pickle.dumps(fast[0]))  # a swapped module pickles and loads
    patch.undo()
    assert not any(type(m).__name__ == "FastLinear" for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_model_that_trains_every_weight_has_nothing_to_install():
    patch = install(make_tiny_model())
    assert patch.count == 0 and patch.skipped == "no frozen nn.Linear layer"


def test_the_function_alone_gives_no_gradient_to_weight_or_bias(split):
    layer = _frozen(torch.float32)
    x = torch.randn(32, 48, requires_grad=True)
    w = layer.weight.detach().requires_grad_()
    FrozenLinearFn.apply(x, w, layer.bias).sum().backward()
    assert w.grad is None and x.grad is not None
    assert frozen_linear._fast_class(nn.Linear).__name__ == "FastLinear"
