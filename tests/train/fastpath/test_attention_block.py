"""The attention block as one node: bit for bit the module calls it replaces, and when it steps
aside."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.tiny import make_tiny_model
from tests.train.fastpath.conftest import PACKED_ROWS, lora_model, node_names, saved_bytes
from tunesmith.data.packing import attention_inputs
from tunesmith.train.fastpath import apply_fast_paths, attention_block, native, row_split
from tunesmith.train.speed import compute_context

NODE = "AttentionBlockBackward"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture
def kernels(cpu_kernels, monkeypatch):
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    if not (native.amx() or native.bf16_dots()):
        pytest.skip("the fused attention needs AMX tiles or AVX512-BF16")
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)  # the tiny model's products take the paths
    return cpu_kernels


def _model(targets, dropout=0.0, arch="llama", attn="eager"):
    torch.manual_seed(0)
    base = make_tiny_model(  # head width 32: the fused attention's
        arch, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
        attn_implementation=attn,
    ).to(torch.bfloat16)  # fmt: skip
    for name, p in base.named_parameters():
        if name.endswith("bias"):  # Qwen2's q/k/v biases start at zero: give them values
            p.data.normal_(0, 0.5)
    return lora_model(base, targets, dropout)


def _batch(kind: str):
    """A packed batch: position ids, token ids and the 2D token mask."""
    if kind == "padded":  # two rows, the second's tail padding (a segment of its own)
        pos = torch.tensor([PACKED_ROWS[0], [p for n in (30, 30, 9) for p in range(n)]])
    else:  # "plain" examples, or a "shared" prompt prefix's copies
        pos = torch.tensor([PACKED_ROWS[0 if kind == "plain" else 1]])
    ids = torch.randint(3, 512, pos.shape, generator=torch.Generator().manual_seed(1))
    tokens = torch.ones_like(pos)
    if kind == "padded":
        tokens[1, -9:] = 0
    return pos, ids, tokens


def _forward(model, batch):
    pos, ids, tokens = batch
    torch.manual_seed(5)  # the dropout masks
    with compute_context(model, torch.device("cpu"), torch.bfloat16, True):
        return model(input_ids=ids, labels=ids, **attention_inputs(model, tokens, pos)).loss


def _step(model, batch):
    loss = _forward(model, batch)
    names = node_names(loss.grad_fn)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, names


@pytest.mark.parametrize(
    ("targets", "dropout"),
    [
        (ATTENTION + ["gate_proj", "up_proj", "down_proj"], 0.0),  # q/k/v stacked
        (["q_proj", "v_proj"], 0.1),  # the seed recipe: k and o frozen, two masks
        (ATTENTION, 0.1),  # four masks, in the module calls' order
        (["o_proj"], 0.0),
        (["gate_proj"], 0.0),  # every attention projection frozen
    ],
    ids=["stacked", "q-v-dropout", "all-dropout", "o", "frozen"],
)
@pytest.mark.parametrize("kind", ["plain", "shared", "padded"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # Qwen2: biases on q, k and v
def test_loss_and_every_gradient_equal_the_module_calls(
    kernels, monkeypatch, targets, dropout, kind, arch
):
    model = _model(targets, dropout, arch)
    fast = apply_fast_paths(model, torch.device("cpu"))
    batch = _batch(kind)
    loss, grads, names = _step(model, batch)
    assert NODE in names
    with monkeypatch.context() as m:
        m.setattr(attention_block, "plan", lambda module, kwargs: None)
        ref_loss, ref_grads, ref_names = _step(model, batch)
    assert NODE not in ref_names and "_FusedAttentionBackward" in ref_names
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, want in ref_grads.items():
        assert grads[name].dtype == want.dtype and torch.equal(grads[name], want), name
    fast.undo()
    assert NODE not in _step(model, batch)[2]


def test_the_node_keeps_what_the_module_calls_kept(kernels, monkeypatch):
    """The saved activations (what the memory plan counts) are the separate nodes' own."""
    model = _model(["q_proj", "v_proj"], dropout=0.1)
    apply_fast_paths(model, torch.device("cpu"))
    batch = _batch("shared")

    fused = saved_bytes(lambda: _forward(model, batch))
    with monkeypatch.context() as m:
        m.setattr(attention_block, "plan", lambda module, kwargs: None)
        assert fused <= saved_bytes(lambda: _forward(model, batch))


def test_a_hook_dora_or_attention_dropout_keeps_the_module_calls(kernels):
    batch = _batch("plain")
    model = _model(ATTENTION)
    apply_fast_paths(model, torch.device("cpu"))
    calls = []
    model.base_model.model.model.layers[0].self_attn.k_proj.register_forward_hook(
        lambda *a: calls.append(1)
    )
    assert NODE in _step(model, batch)[2]  # layer 1 has no hook
    assert len(calls) == 1  # layer 0's module calls ran it
    for layer in model.base_model.model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    assert NODE not in _step(model, batch)[2]

    torch.manual_seed(0)
    base = make_tiny_model(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager"
    ).to(torch.bfloat16)
    dora = get_peft_model(base, LoraConfig(r=4, target_modules=ATTENTION, use_dora=True)).train()
    apply_fast_paths(dora, torch.device("cpu"))
    assert NODE not in _step(dora, batch)[2]


def test_unpacked_passes_other_attention_and_evaluation_keep_the_module_calls(kernels):
    model = _model(ATTENTION)
    apply_fast_paths(model, torch.device("cpu"))
    pos, ids, tokens = _batch("plain")
    with compute_context(model, torch.device("cpu"), torch.bfloat16, True):
        loss = model(input_ids=ids, labels=ids).loss  # one causal sequence: no packed layout
        assert NODE not in node_names(loss.grad_fn)
        model.eval()
        with torch.no_grad():
            model(input_ids=ids, **attention_inputs(model, tokens, pos))
        model.train()
    sdpa = _model(ATTENTION, attn="sdpa")
    apply_fast_paths(sdpa, torch.device("cpu"))
    assert NODE not in _step(sdpa, (pos, ids, tokens))[2]


def test_another_attention_forward_keeps_its_module_calls(kernels):
    """Qwen3's attention normalizes q and k before RoPE: not the forward the node computes."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        vocab_size=512, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model = lora_model(base, ATTENTION)
    fast = apply_fast_paths(model, torch.device("cpu"))
    assert fast.installed.get("rope") and fast.installed.get("attention")
    names = _step(model, _batch("plain"))[2]
    assert NODE not in names and "_FusedAttentionBackward" in names


def test_under_checkpointing_the_recomputed_node_gives_the_same_gradients(kernels, monkeypatch):
    """The recompute draws the same masks (checkpointing restores the generator) and keeps
    the values: the same loss and gradients as without checkpointing and as the module calls."""
    model = _model(ATTENTION, dropout=0.1)
    fast = apply_fast_paths(model, torch.device("cpu"))
    batch = _batch("shared")
    plain = _step(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = _step(model, batch)
    assert NODE in checkpointed[2]
    with monkeypatch.context() as m:
        m.setattr(attention_block, "plan", lambda module, kwargs: None)
        calls = _step(model, batch)
    for other in (plain, calls):
        assert torch.equal(checkpointed[0], other[0])
        assert all(torch.equal(g, other[1][n]) for n, g in checkpointed[1].items())
    fast.undo()


def test_no_attention_backward_where_only_o_trains_and_no_input_gradient_is_wanted(
    kernels, monkeypatch
):
    """Layer 0 with frozen q, k, v reads the embeddings, which want no gradient: as in the
    module calls, o's node gives no input gradient and the attention is not differentiated."""
    from tunesmith.train.fastpath import fused_attention

    model = _model(["o_proj"])
    apply_fast_paths(model, torch.device("cpu"))
    calls = []
    backward = fused_attention.backward
    monkeypatch.setattr(fused_attention, "backward", lambda *a: calls.append(1) or backward(*a))
    assert NODE in _step(model, _batch("plain"))[2]
    assert len(calls) == 1  # layer 1's, whose input comes from layer 0's trained o
