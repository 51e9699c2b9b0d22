"""The SwiGLU fast path: which MLPs it takes, that they compute as before, and undo."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tests.tiny import make_tiny_model
from tests.train.fastpath.conftest import node_names
from tunesmith.train.fastpath import native
from tunesmith.train.fastpath.swiglu import install, why_not_swiglu


@pytest.fixture
def kernels(cpu_kernels):
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    return cpu_kernels


def _mlp_classes(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__name__.endswith("MLP")}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_probe_accepts_the_swiglu_mlps(arch):
    model = make_tiny_model(arch)
    assert why_not_swiglu(model.model.layers[0].mlp) is None


def test_probe_refuses_another_activation_and_leaves_the_module_alone():
    mlp = make_tiny_model("llama", hidden_act="gelu").model.layers[0].mlp
    projections = {n: getattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")}
    assert "not down(silu" in why_not_swiglu(mlp)
    assert all(getattr(mlp, n) is p for n, p in projections.items())  # the probe copied
    assert why_not_swiglu(nn.Linear(4, 4)) == "it has no gate_proj, up_proj and down_proj"


@pytest.mark.parametrize("lora", [False, True])
def test_installed_mlps_compute_as_before_and_undo(kernels, lora):
    ref = make_tiny_model("llama").to(torch.bfloat16)
    if lora:  # the projections stay the module's own calls: LoRA branches run as before
        ref = get_peft_model(ref, LoraConfig(r=4, target_modules=["gate_proj", "up_proj"]))
    fast = copy.deepcopy(ref)
    patch = install(fast)
    assert patch.count == 2 and patch.skipped is None
    assert _mlp_classes(fast) == {"FastLlamaMLP"}
    ids = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
    fast.train()
    ref.train()
    loss = fast(input_ids=ids, labels=ids).loss
    loss_ref = ref(input_ids=ids, labels=ids).loss
    assert torch.equal(loss, loss_ref)  # the forward is bit for bit
    loss.backward()
    loss_ref.backward()
    for (name, p), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=0.05, atol=1e-3, msg=name)
    patch.undo()
    assert _mlp_classes(fast) == {"LlamaMLP"}


def test_fp32_activations_keep_the_module_formula(kernels):
    model = make_tiny_model("llama")  # fp32
    install(model)
    ids = torch.randint(0, 512, (1, 7))
    names = node_names(
        model.train()(input_ids=ids, labels=ids).loss.grad_fn
    )  # no kernel node for fp32
    assert "_SwiGLUBackward" not in names and "SiluBackward0" in names


def test_without_the_kernels_it_says_why(monkeypatch):
    monkeypatch.setenv(native.ENV, "0")
    patch = install(make_tiny_model("llama"))
    assert patch.count == 0 and native.ENV in patch.skipped and patch.expected


def test_kernels_that_could_be_built_but_are_not_are_a_warning(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda: None)
    monkeypatch.setattr(native, "buildable", lambda: None)
    monkeypatch.setattr(native, "built", lambda: False)
    patch = install(make_tiny_model("llama"))
    assert patch.count == 0 and native.BUILD_COMMAND in patch.skipped and not patch.expected


@pytest.mark.parametrize("hooked", [None, "up_proj", "down_proj"])
def test_frozen_gate_and_up_are_one_node_with_one_input_gradient(kernels, monkeypatch, hooked):
    """Both projections frozen linears: one node computes them and the product (with the down
    projection: gated_mlp's node), its input gradient one sum (within a rounding of the two
    products autograd added); a hook on a projection keeps that projection's module call, so
    the hook still runs."""
    from tunesmith.train.fastpath import frozen_linear, row_split

    monkeypatch.setattr(row_split, "MIN_ROWS", 8)  # the tiny model's products take the path
    ref = make_tiny_model("llama").to(torch.bfloat16)
    for name, p in ref.named_parameters():
        p.requires_grad_("mlp" not in name)  # frozen MLPs, as LoRA on q and v leaves them
    fast = copy.deepcopy(ref)
    frozen_linear.install(fast)
    install(fast)
    calls = []
    if hooked:
        getattr(fast.model.layers[0].mlp, hooked).register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(0))
    fast.train()
    ref.train()
    loss = fast(input_ids=ids, labels=ids).loss
    loss_ref = ref(input_ids=ids, labels=ids).loss
    nodes = node_names(loss.grad_fn)
    assert "GatedMlpBackward" in nodes  # the second layer's MLP, not hooked
    assert ("_FrozenGatedUnitBackward" in nodes) == (hooked == "down_proj")
    assert calls == ([1] if hooked else [])  # the hooked layer's projection ran as a module
    torch.testing.assert_close(loss, loss_ref, rtol=1e-2, atol=1e-2)
    loss.backward()
    loss_ref.backward()
    for (name, p), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=0.05, atol=2e-3, msg=name)
