"""The fused LoRA branch against its reference, peft's own ``lora.Linear.forward``."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from tests.tiny import make_tiny_model
from tests.train.fastpath.conftest import adapter_step as _step
from tunesmith.train.fastpath import dropout, lora_linear, native, row_split
from tunesmith.train.fastpath.lora import install, why_not_plain

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft(dtype=torch.float32, dropout=0.0, **extra):
    torch.manual_seed(0)
    model = make_tiny_model().to(dtype)
    cfg = LoraConfig(r=4, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS, **extra)
    model = get_peft_model(model, cfg)  # adapter weights fp32, as peft upcasts them
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the branch something to add
            p.data.normal_(0, 0.05)
    return model.train()


@pytest.mark.parametrize(
    ("dtype", "autocast", "tol"),
    [(torch.float32, False, 1e-5), (torch.bfloat16, True, 3e-2)],
    ids=["fp32", "bf16-autocast"],
)
@pytest.mark.parametrize("row_blocks", [False, True], ids=["whole", "row-blocks"])
def test_loss_and_gradients_match_peft(monkeypatch, dtype, autocast, tol, row_blocks):
    measured = []
    if row_blocks:  # every frozen product cut into 16-row blocks (row_split.py)
        monkeypatch.setattr(row_split, "MIN_ROWS", 8)
        monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
        monkeypatch.setattr(row_split, "_measure", lambda a, b: measured.append(1) or 16)
        monkeypatch.setattr(row_split, "_SPLITS", row_split.RowSplits(None))
    ref = _peft(dtype)
    fast = copy.deepcopy(ref)
    patch = install(fast)
    assert patch.count == 2 * len(TARGETS)
    ids = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = _step(ref, ids, autocast)
    loss, grads = _step(fast, ids, autocast)
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    assert ref_grads.keys() == grads.keys() and len(grads) == 4 * len(TARGETS)
    for name, want in ref_grads.items():
        assert grads[name].dtype == want.dtype == torch.float32  # the masters' dtype
        scale = want.abs().max().clamp_min(1e-6)
        assert float((grads[name] - want).abs().max() / scale) < tol * 5, name
    assert bool(measured) == row_blocks


def _fixed_masks(monkeypatch):
    """Make every dropout mask a function of its call's index only; records each mask's dtype."""
    calls = []

    def keep_mask(shape, p, dtype, device):
        gen = torch.Generator().manual_seed(len(calls))
        calls.append(dtype)
        return (torch.rand(shape, generator=gen) >= p).to(device, dtype)

    monkeypatch.setattr(dropout, "draw_mask", keep_mask)
    return calls


@pytest.mark.parametrize(
    ("dtype", "autocast", "tol"),
    [(torch.float32, False, 1e-5), (torch.bfloat16, True, 3e-2)],
    ids=["fp32", "bf16-autocast"],
)
def test_a_branch_with_dropout_matches_peft_with_the_same_masks(monkeypatch, dtype, autocast, tol):
    ref = _peft(dtype, dropout=0.25)
    dropout.install(ref)  # both run tunesmith's dropout module: peft's forward calls it
    fast = copy.deepcopy(ref)
    assert install(fast).count == 2 * len(TARGETS)
    ids = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(1))
    calls = _fixed_masks(monkeypatch)
    ref_loss, ref_grads = _step(ref, ids, autocast)
    # tunesmith's compute context turns off peft's input upcast: the masks are in x's dtype.
    assert calls == [dtype] * 2 * len(TARGETS)
    calls.clear()
    loss, grads = _step(fast, ids, autocast)
    assert calls == [dtype] * 2 * len(TARGETS)  # one mask per branch, in the same order
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    assert ref_grads.keys() == grads.keys() and len(grads) == 4 * len(TARGETS)
    for name, want in ref_grads.items():
        scale = want.abs().max().clamp_min(1e-6)
        assert float((grads[name] - want).abs().max() / scale) < tol * 5, name
    assert _calls(fast, ids, monkeypatch, autocast) == [1] * 2 * len(TARGETS)  # fused nodes ran
    # Dropout is real: the same step without masks gives another loss.
    monkeypatch.undo()
    fast.eval()
    with torch.no_grad():
        assert not torch.allclose(fast(input_ids=ids, labels=ids).loss, loss, rtol=1e-3)


def test_eval_and_no_grad_run_peft_forward_unchanged():
    ref = _peft()
    fast = copy.deepcopy(ref)
    install(fast)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        fast.eval(), ref.eval()
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        with fast.disable_adapter(), ref.disable_adapter():
            assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_only_plain_branches_are_changed_and_undo_restores_them():
    with_dropout = _peft(dropout=0.1)
    assert install(with_dropout).count == 0  # torch's dropout: its mask is not at hand
    layer = next(m for m in with_dropout.modules() if isinstance(m, LoraLinear))
    assert "dropout" in why_not_plain(layer)
    dropout.install(with_dropout)
    assert install(with_dropout).count == 2 * len(TARGETS)
    dora = _peft(use_dora=True)
    patch = install(dora)
    assert patch.count == 0 and "DoRA" in patch.skipped
    plain = _peft()
    keys = list(plain.state_dict())
    patch = install(plain)
    assert all(
        type(m).__name__ == "FastLinear" for m in plain.modules() if isinstance(m, LoraLinear)
    )
    assert list(plain.state_dict()) == keys  # saved adapters are unchanged
    patch.undo()
    assert all(type(m) is LoraLinear for m in plain.modules() if isinstance(m, LoraLinear))


def test_merge_after_training_with_the_fast_path_equals_peft_merge():
    """The swapped class keeps peft's merge: the merged weights are the same either way."""
    ref = _peft()
    fast = copy.deepcopy(ref)
    install(fast)
    merged_ref = ref.merge_and_unload().state_dict()
    merged = fast.merge_and_unload().state_dict()
    assert merged.keys() == merged_ref.keys()
    assert all(torch.equal(merged[k], merged_ref[k]) for k in merged)


def _assert_same_fp32_step(ref, fast, ids) -> None:
    """One fp32 training step of ``fast`` gives ``ref``'s loss and every adapter gradient."""
    ref_loss, ref_grads = _step(ref, ids, autocast=False)
    loss, grads = _step(fast, ids, autocast=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6)


def _calls(model, ids, monkeypatch, autocast=False) -> list[int]:
    """The projections in each fused LoRA node one training step of ``model`` builds."""
    from tunesmith.train.fastpath import lora_siblings
    from tunesmith.train.fastpath.lora_linear import LoraLinears

    seen = []

    def counting(*args):
        seen.append(args[3])  # the scales: one per projection in the node
        return LoraLinears.apply(*args)

    class Counting:
        apply = staticmethod(counting)

    monkeypatch.setattr(lora_siblings, "LoraLinears", Counting)
    monkeypatch.setattr("tunesmith.train.fastpath.lora.LoraLinears", Counting)
    _step(model, ids, autocast)
    monkeypatch.undo()
    return [len(s) for s in seen]


def test_q_k_v_share_one_stacked_weight_and_one_node_until_undo(monkeypatch):
    model = _peft()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    patch = install(model)
    attn = model.base_model.model.model.layers[0].self_attn
    q, k, v = (getattr(attn, n).base_layer.weight for n in ("q_proj", "k_proj", "v_proj"))
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    assert v.data_ptr() == k.data_ptr() + k.numel() * k.element_size()
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(3))
    # 2 layers: q/k/v as one node, then o, gate, up, down one node each.
    assert _calls(model, ids, monkeypatch) == [3, 1, 1, 1, 1] * 2
    group = attn.q_proj.__dict__["_tunesmith_siblings"]
    assert group._x is None and not group._waiting  # no activation held past the block
    patch.undo()
    assert q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora" not in n)
    assert not any("_tunesmith_siblings" in m.__dict__ for m in model.modules())


def test_a_sibling_whose_weight_moved_computes_alone_with_the_same_result(monkeypatch):
    ref = _peft()
    fast = copy.deepcopy(ref)
    install(fast)
    attn = fast.base_model.model.model.layers[1].self_attn
    attn.k_proj.base_layer.weight.data = attn.k_proj.base_layer.weight.data.clone()
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(4))
    assert _calls(fast, ids, monkeypatch) == [3, 1, 1, 1, 1] + [1] * 7
    _assert_same_fp32_step(ref, fast, ids)


def test_projections_with_a_bias_match_peft():
    """Qwen2's q, k and v carry a bias: it is stacked with the weights."""
    torch.manual_seed(0)
    model = make_tiny_model("qwen2")
    cfg = LoraConfig(r=4, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
    ref = get_peft_model(model, cfg).train()
    for name, p in ref.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    fast = copy.deepcopy(ref)
    install(fast)
    attn = fast.base_model.model.model.layers[0].self_attn
    assert attn.q_proj.base_layer.bias is not None and "_tunesmith_siblings" in attn.q_proj.__dict__
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(5))
    _assert_same_fp32_step(ref, fast, ids)


def test_siblings_with_their_own_ranks_and_scales_match_peft(monkeypatch):
    """rank_pattern / alpha_pattern: k's block in the stacked node has its own width and scale."""
    ref = _peft(rank_pattern={"k_proj": 2}, alpha_pattern={"v_proj": 8})
    fast = copy.deepcopy(ref)
    install(fast)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(7))
    assert _calls(fast, ids, monkeypatch) == [3, 1, 1, 1, 1] * 2
    _assert_same_fp32_step(ref, fast, ids)


@pytest.mark.parametrize(("dropout", "nodes"), [(0.0, [1] * 14), (0.1, [])])
def test_a_second_adapter_switched_to_runs_outside_the_stack(dropout, nodes, monkeypatch):
    """The stack was built for the first adapter; another active one is computed per module,
    by peft's own forward where it has dropout."""
    ref = _peft()
    fast = copy.deepcopy(ref)
    install(fast)
    second = LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, target_modules=TARGETS)
    for model in (ref, fast):
        torch.manual_seed(9)  # the same initial A for both
        model.add_adapter("second", second)
        model.set_adapter("second")
        for name, p in model.named_parameters():
            if "lora_B.second" in name:
                torch.manual_seed(len(name))
                p.data.normal_(0, 0.05)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(8))
    assert _calls(fast, ids, monkeypatch) == nodes
    torch.manual_seed(10)  # the same dropout masks for both
    ref_loss, _ = _step(ref, ids, autocast=False)
    torch.manual_seed(10)
    loss, _ = _step(fast, ids, autocast=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    if not dropout:
        _assert_same_fp32_step(ref, fast, ids)


def _lora_spy(kernels, ran: list):
    """What ``native.kernels`` returns: the built module, recording its LoRA calls in ``ran``."""

    class Spy:
        def __getattr__(self, name):
            fn = getattr(kernels, name)
            if not name.startswith("lora_"):
                return fn
            return lambda *a, **kw: ran.append(_call(name, a)) or fn(*a, **kw)

    def _call(name, args):  # lora_backward's last argument: its products on AMX tiles
        return f"{name} on tiles" if name == "lora_backward" and args[-1] else name

    return Spy


def _agrees_with_the_step_without_kernels(monkeypatch, ref, ids, loss, grads):
    """The same step with the kernels off (same masks): loss and gradients within bf16 rounding."""
    monkeypatch.undo()
    _fixed_masks(monkeypatch)
    monkeypatch.setenv(native.ENV, "0")
    want_loss, want_grads = _step(ref, ids, autocast=True)
    torch.testing.assert_close(loss, want_loss, rtol=1e-2, atol=1e-2)
    for name, want in want_grads.items():
        scale = want.abs().max().clamp_min(1e-6)
        assert float((grads[name] - want).abs().max() / scale) < 0.05, name


@pytest.mark.parametrize(
    ("p", "extra"),
    [(0.0, {"rank_pattern": {"k_proj": 6}}), (0.25, {})],
    ids=["stacked-own-ranks", "dropout"],
)
def test_bf16_steps_with_and_without_the_rank_r_kernels_agree(monkeypatch, p, extra):
    """Where tunesmith's CPU kernels are built, a bf16 step's rank-r products run in them
    (every node, forward and backward); loss and gradients are those of the step without them,
    within bf16 rounding (they round the same products, summed in another order)."""
    kernels = native.kernels()
    if kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    ref = _peft(torch.bfloat16, dropout=p, **extra)
    if p:  # tunesmith's dropout module, as training installs it
        dropout.install(ref)
    install(ref)
    ids = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(1))

    ran = []

    _fixed_masks(monkeypatch)
    monkeypatch.setattr(native, "kernels", _lora_spy(kernels, ran))
    monkeypatch.setattr(lora_linear, "TILES_MIN_RANK", 10**6)  # the vector pass everywhere
    loss, grads = _step(ref, ids, autocast=True)
    nodes = 2 * (5 if p == 0 else len(TARGETS))
    assert ran.count("lora_forward_") == ran.count("lora_backward") == nodes
    _agrees_with_the_step_without_kernels(monkeypatch, ref, ids, loss, grads)


@pytest.mark.parametrize("p", [0.0, 0.25], ids=["plain", "dropout"])
def test_branches_on_amx_tiles_extend_the_frozen_product_and_agree(monkeypatch, amx_kernels, p):
    """Where the frozen product runs in the AMX kernel, the branch is its low-rank extension
    (``lora_operands``, no ``lora_forward_`` pass over the output): loss and gradients are
    those of the step without the kernels, within bf16 rounding (one rounding fewer)."""
    ref = _peft(torch.bfloat16, dropout=p)
    if p:
        dropout.install(ref)
    install(ref)
    ids = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(1))
    ran = []

    _fixed_masks(monkeypatch)
    monkeypatch.setattr(native, "kernels", _lora_spy(amx_kernels, ran))
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setattr(lora_linear, "TILES_MIN_RANK", 1)  # the backward on tiles at rank 4 too
    on_tiles = lambda a, b: row_split.AMX if row_split.amx_takes(a, b) else 0  # noqa: E731
    monkeypatch.setattr(row_split, "_measure", on_tiles)
    monkeypatch.setattr(row_split, "_SPLITS", row_split.RowSplits(None))
    loss, grads = _step(ref, ids, autocast=True)
    nodes = 2 * (5 if p == 0 else len(TARGETS))
    assert ran.count("lora_operands") == nodes and "lora_forward_" not in ran
    assert ran.count("lora_backward on tiles") == nodes
    _agrees_with_the_step_without_kernels(monkeypatch, ref, ids, loss, grads)


def test_the_vector_passes_take_the_bf16_dot_products_where_no_amx_runs(monkeypatch):
    monkeypatch.setattr(native, "amx", lambda: True)  # measured paths until timed on AMX CPUs
    assert not lora_linear._bf16_dots()
    monkeypatch.setattr(native, "amx", lambda: False)
    assert lora_linear._bf16_dots()


def test_the_backward_goes_on_tiles_from_its_minimum_rank_on_widths_of_tiles(amx_kernels):
    def on_tiles(rank, d_out=64, d_in=64):
        g, h, x = (torch.zeros(4, w, dtype=torch.bfloat16) for w in (d_out, rank, d_in))
        return lora_linear._backward_on_tiles(g, h, x)

    low = lora_linear.TILES_MIN_RANK
    assert on_tiles(low) and on_tiles(4 * low) and not on_tiles(low - 1)
    assert not on_tiles(low, d_out=48) and not on_tiles(low, d_in=40)
