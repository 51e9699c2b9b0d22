"""The gated MLP as one node: bit for bit the module calls it replaces, and when it steps aside."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.tiny import make_tiny_model
from tests.train.fastpath.conftest import adapter_step, lora_model, node_names, saved_bytes
from tunesmith.train.fastpath import apply_fast_paths, gated_mlp, native, row_split

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture
def kernels(cpu_kernels, monkeypatch):
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)  # the tiny model's products take the paths
    return cpu_kernels


def _model(targets, dropout=0.0):
    torch.manual_seed(0)
    return lora_model(make_tiny_model().to(torch.bfloat16), targets, dropout)


def _step_without_the_node(model, ids, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(gated_mlp, "plan", lambda mlp, x: None)
        return adapter_step(model, ids, autocast=True)


def _mlp_nodes(model, ids) -> set[str]:
    from tunesmith.train.speed import compute_context

    with compute_context(model, torch.device("cpu"), torch.bfloat16, True):
        loss = model(input_ids=ids, labels=ids).loss
    return node_names(loss.grad_fn)


@pytest.mark.parametrize(
    "mlp_targets",
    [["gate_proj", "up_proj", "down_proj"], ["gate_proj"], ["up_proj"], ["down_proj"], []],
    ids=["all-three", "gate", "up", "down", "frozen"],
)
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["plain", "dropout"])
def test_loss_and_every_gradient_equal_the_module_calls(kernels, monkeypatch, mlp_targets, dropout):
    """With dropout, each LoRA projection's mask drawn in the module calls' order."""
    model = _model(ATTENTION + mlp_targets, dropout)
    fast = apply_fast_paths(model, torch.device("cpu"))
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    assert "GatedMlpBackward" in _mlp_nodes(model, ids)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss, grads = adapter_step(model, ids, autocast=True)
    torch.manual_seed(5)
    ref_loss, ref_grads = _step_without_the_node(model, ids, monkeypatch)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    assert sum("mlp" in n for n in grads) == 2 * len(mlp_targets) * 2  # A and B, two layers
    for name, want in ref_grads.items():
        assert grads[name].dtype == want.dtype and torch.equal(grads[name], want), name
    fast.undo()
    assert "GatedMlpBackward" not in _mlp_nodes(model, ids)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["plain", "dropout"])
def test_the_node_keeps_what_the_module_calls_kept(kernels, monkeypatch, dropout):
    """The saved activations (what the memory plan counts) are the separate nodes' own."""
    model = _model(ATTENTION + ["gate_proj", "up_proj", "down_proj"], dropout)
    apply_fast_paths(model, torch.device("cpu"))
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))

    fused = saved_bytes(lambda: _mlp_nodes(model, ids))
    with monkeypatch.context() as m:
        m.setattr(gated_mlp, "plan", lambda mlp, x: None)
        assert fused <= saved_bytes(lambda: _mlp_nodes(model, ids))


def test_a_hook_keeps_the_module_calls(kernels):
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    model = _model(ATTENTION + ["gate_proj", "up_proj", "down_proj"])
    apply_fast_paths(model, torch.device("cpu"))
    calls = []
    for layer in model.base_model.model.model.layers:
        layer.mlp.down_proj.register_forward_hook(lambda *a: calls.append(1))
    assert "GatedMlpBackward" not in _mlp_nodes(model, ids)
    assert len(calls) == 2  # the hooks ran


def test_no_node_without_gradients_or_outside_training(kernels):
    model = _model(ATTENTION + ["gate_proj", "up_proj", "down_proj"])
    apply_fast_paths(model, torch.device("cpu"))
    mlp = model.base_model.model.model.layers[0].mlp
    x = torch.randn(1, 16, 64, dtype=torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):  # as tunesmith trains fp32 adapters
        assert gated_mlp.plan(mlp, x) is not None  # the LoRA weights want gradients
        with torch.no_grad():
            assert gated_mlp.plan(mlp, x) is None
        mlp.eval()
        assert gated_mlp.plan(mlp, x) is None
        mlp.train()
    assert gated_mlp.plan(mlp, x) is None  # no autocast: the adapters compute in fp32


def test_frozen_projections_without_an_input_gradient_need_no_node(kernels):
    model = copy.deepcopy(make_tiny_model().to(torch.bfloat16))
    for p in model.parameters():
        p.requires_grad_(False)
    apply_fast_paths(model, torch.device("cpu"))
    x = torch.randn(1, 16, 64, dtype=torch.bfloat16)
    mlp = model.model.layers[0].mlp
    assert gated_mlp.plan(mlp, x) is None
    assert gated_mlp.plan(mlp, x.requires_grad_()) is not None
