"""The fast paths' tests run with tunesmith's CPU kernels built, where they can be (``make``
builds them at install; a run of these tests alone builds them once, ~35 s)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.train.fastpath import native


def node_names(node) -> set[str]:
    """The class names of the autograd nodes in the graph below ``node``."""
    seen, todo, names = set(), [node], set()
    while todo:
        n = todo.pop()
        if n is not None and n not in seen:
            seen.add(n)
            names.add(type(n).__name__)
            todo.extend(f for f, _ in n.next_functions)
    return names


def lora_model(base, targets, dropout: float = 0.0):
    """``base`` (bf16) with LoRA r=4 on ``targets`` in training mode: fp32 adapters, as tunesmith
    trains them, and B given values (it starts at zero)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=32, lora_dropout=dropout, target_modules=targets)
    model = get_peft_model(base, config)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float().normal_(0, 0.05) if "lora_B" in name else p.data.float()
    return model.train()


def saved_bytes(forward) -> int:
    """The bytes of the distinct storages autograd saves while ``forward()`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def adapter_step(model, ids, autocast: bool):
    """Loss and every adapter gradient of one forward + backward, as tunesmith trains (bf16
    under autocast with peft's input cast off where ``autocast``)."""
    from tunesmith.train.speed import compute_context

    ctx = compute_context(
        model, torch.device("cpu"), torch.bfloat16 if autocast else None, autocast
    )
    with ctx:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels():
    """The built kernels module, or None where this machine cannot build them."""
    if native.buildable() is not None:
        return None
    native.build()
    return native.kernels()


@pytest.fixture
def amx_kernels(cpu_kernels):
    """The built kernels where their AMX products run (native.amx()); the test skips elsewhere."""
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    if not native.amx():
        pytest.skip("no AMX-BF16 tiles on this CPU")
    return cpu_kernels


# One packed row: examples of 5, 40, 1 and 23 tokens; a shared prefix of 9 tokens continued by
# three examples (positions restart at 9: data/shared_prefix.py), the layout's copied slots.
PACKED_ROWS = [
    [p for n in (5, 40, 1, 23) for p in range(n)],
    [*range(20), *range(9, 30), *range(9, 17), *range(4)],
]


@pytest.fixture
def packed_pass(monkeypatch):
    """``run(positions, switch, dtype)``: grouped_attention, training, over one packed row of
    (1, T, 6 | 2, 64) q, k, v (bf16 values in ``dtype``) with the kernels' switch set; returns
    the output, (dq, dk, dv) for a fixed output gradient."""
    from tunesmith.data.packing import block_causal_mask
    from tunesmith.train.fastpath import attention

    def run(positions, switch: str = "1", dtype=torch.bfloat16):
        monkeypatch.setenv(native.ENV, switch)
        module = torch.nn.Module().train()
        module.num_key_value_groups = 3
        pos = torch.tensor([positions])
        T = len(positions)
        gen = torch.Generator().manual_seed(2)
        shapes = [(1, T, 6, 64), (1, T, 2, 64), (1, T, 2, 64)]
        values = [torch.randn(s, generator=gen).bfloat16().to(dtype) for s in shapes]
        q, k, v = (t.transpose(1, 2).requires_grad_() for t in values)
        grad = torch.randn(1, T, 6, 64, generator=gen).bfloat16().to(dtype)
        mask = block_causal_mask(pos, dtype)
        out, _ = attention.grouped_attention(module, q, k, v, mask, 0.125, position_ids=pos)
        return out, torch.autograd.grad(out, (q, k, v), grad)

    return run
