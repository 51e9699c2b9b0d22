"""bench train's shape-matched limit: the GEMMs a real step dispatches, replayed alone."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tunesmith.bench.train.gemm_limit import (
    Gemm,
    _buffers,
    record_calls,
    record_gemms,
    replay,
    replay_in_order,
)
from tunesmith.bench.train.measure import LORA, BenchSettings, share_limit
from tunesmith.loss.head_ce import ROW_BUCKET
from tunesmith.train.fastpath import row_split


def test_a_linear_records_its_product_with_the_weight_transposed():
    x = torch.randn(5, 3, 16, requires_grad=True)
    w = torch.randn(32, 16)
    counts = record_gemms(lambda: torch.nn.functional.linear(x, w).sum().backward())
    # forward x @ W^T, backward dX = dY @ W; no weight gradient (W needs none).
    assert counts == {
        Gemm(1, 15, 32, 16, torch.float32, b_t=True): 1,
        Gemm(1, 15, 16, 32, torch.float32): 1,
    }


def test_a_frozen_products_row_blocks_count_and_their_timing_runs_do_not(monkeypatch):
    from tunesmith.train.fastpath import row_split

    monkeypatch.setattr(row_split, "MIN_ROWS", 8)
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setattr(row_split, "candidates", lambda rows, amx=False: [0, 8])
    product = row_split._mm

    def slow_whole(a, b, height, out=None):  # real products; the whole one made the slowest
        if height == 0:
            time.sleep(0.005)
        return product(a, b, height, out)

    monkeypatch.setattr(row_split, "_mm", slow_whole)
    rows = row_split.RowSplits(None)
    x, w = torch.randn(16, 16), torch.randn(32, 16)
    counts = record_gemms(lambda: rows.mm(x, w.t()))
    # The step's own product: two 8-row blocks; the 2 x (1 + 3) timing calls are left out.
    assert rows.height(x, w.t()) == 8
    assert counts == {Gemm(1, 8, 32, 16, torch.float32, b_t=True): 2}


def test_a_lora_nodes_in_place_products_count():
    from tunesmith.train.fastpath.lora_linear import LoraLinears

    T, C, out, r = 12, 16, 24, 4
    x = torch.randn(T, C, requires_grad=True)
    w = torch.randn(out, C)
    a, b = torch.randn(r, C, requires_grad=True), torch.randn(out, r, requires_grad=True)
    counts = record_gemms(
        lambda: LoraLinears.apply(x, w, None, (2.0,), None, a, b).sum().backward()
    )
    # The branch's (T, r) @ (r, out) is added in place to the frozen product, and the frozen
    # input gradient (T, out) @ (out, C) in place to (dh a): both are the step's GEMMs.
    assert counts[Gemm(1, T, out, r, torch.float32, b_t=True)] == 1
    assert counts[Gemm(1, T, C, out, torch.float32)] == 1
    # With x W^T, x A^T, dh = g sB, dh A and A's and B's gradients: 8 products.
    assert sum(counts.values()) == 8


def test_attention_counts_its_products_whichever_kernel_runs():
    B, H, L, E = 2, 3, 7, 8
    q, k, v = (torch.randn(B, H, L, E, requires_grad=True) for _ in range(3))
    counts = record_gemms(
        lambda: (
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            .sum()
            .backward()
        )
    )
    # Two products forward, four backward, each 2*B*H*L*L*E FLOPs (fused or decomposed).
    assert sum(g.flops * n for g, n in counts.items()) == 6 * 2 * B * H * L * L * E


def test_replay_is_a_time_and_counts_every_call():
    counts = {Gemm(1, 64, 32, 16, torch.float32, b_t=True): 5, Gemm(4, 8, 8, 8, torch.float32): 2}
    limit = replay(counts, reps=2, max_calls=2)
    assert limit.seconds > 0 and math.isfinite(limit.seconds)
    assert (limit.calls, limit.distinct) == (7, 2)
    assert limit.flops == 5 * 2 * 64 * 32 * 16 + 2 * 2 * 4 * 8**3


def test_in_order_replay_keeps_one_buffer_per_storage_the_step_used():
    x = torch.randn(16, 8, requires_grad=True)
    w = torch.randn(32, 8)
    calls = record_calls(lambda: torch.nn.functional.linear(x, w).sum().backward())
    # Forward x @ W^T and backward dY @ W read the same weight: one buffer serves both views.
    (fwd_w,) = [c.b for c in calls if c.gemm.b_t]
    (bwd_w,) = [c.b for c in calls if not c.gemm.b_t]
    assert fwd_w.storage == bwd_w.storage and fwd_w.stride == (1, 8) and bwd_w.stride == (8, 1)
    buffers = _buffers(calls, torch.device("cpu"))
    assert buffers[(fwd_w.storage, torch.float32)].numel() == 32 * 8
    assert len(buffers) == len({(op.storage, op.dtype) for c in calls for op in (c.a, c.b)})
    seconds = replay_in_order(calls, reps=2)
    assert seconds > 0 and math.isfinite(seconds)


def test_a_tiny_steps_gemms_hold_the_head_and_the_lora_products(tiny_llama_dir, tmp_path):
    from tunesmith.bench.train.data import prepare_data
    from tunesmith.bench.train.tunesmith_side import prepare_loop, step_limit

    settings = BenchSettings(model=str(tiny_llama_dir), steps=2, n_train=60, n_eval=16)
    data = prepare_data(tmp_path / "data", settings)
    ready = prepare_loop(settings, data["train_messages"], tmp_path, torch.device("cpu"))
    ready.loop.train()
    with row_split.through_torch():  # as step_limit records them: the head's products too
        counts = record_gemms(lambda: ready.loop._step(1))
    assert counts
    c = ready.model.config
    rank, vocab, hidden = LORA["rank"], c.vocab_size, c.hidden_size
    passes = ready.loop.micro_batches(1)
    # The head: forward (trained positions, C) @ (C, V) and its input gradient, once per pass,
    # over the positions whose next token is trained, rounded up as the fused head runs them.
    head = [(g, n) for g, n in counts.items() if g.n == vocab and g.k == hidden]
    rows = [-(-b.num_trained // ROW_BUCKET) * ROW_BUCKET for b in passes]
    assert sum(g.m * n for g, n in head) == sum(rows)
    assert any(g.k == vocab and g.n == hidden for g in counts)
    # LoRA: A's forward (T, C) @ (C, r), B's forward (T, r) @ (r, out), A's weight gradient.
    assert any(g.n == rank and g.k == hidden for g in counts)
    assert any(g.k == rank for g in counts)
    assert any(g.m == rank and g.n == hidden for g in counts)
    # The frozen base gets input gradients only: no (C, C) weight-gradient product.
    assert not any(g.batch == 1 and (g.m, g.n) == (hidden, hidden) for g in counts)
    limit = step_limit(ready.loop, range(1, 2))
    assert limit.seconds > 0 and limit.calls == sum(counts.values())
    assert limit.in_order_seconds > 0


def test_share_limit_gives_the_peers_the_same_seconds_per_trained_token():
    rows = [
        {"variant": "tunesmith", "rep": 0, "timed_steps": 2, "trained_tokens": 100,
         "wall_s": 4.0, "shape_limit_s": 0.5, "shape_limit_ratio": 0.25,
         "order_limit_s": 1.0, "order_limit_ratio": 0.5},
        {"variant": "trl-default", "rep": 0, "timed_steps": 2, "trained_tokens": 200,
         "wall_s": 20.0},
        {"variant": "trl-tuned", "rep": 1, "timed_steps": 2, "trained_tokens": 100,
         "wall_s": 5.0},
    ]  # fmt: skip
    share_limit(rows)
    assert rows[1]["shape_limit_s"] == pytest.approx(1.0)  # 0.01 s/token * 200 / 2 steps
    assert rows[1]["shape_limit_ratio"] == pytest.approx(0.1)
    assert rows[1]["order_limit_s"] == pytest.approx(2.0)  # 0.02 s/token * 200 / 2 steps
    assert "shape_limit_s" not in rows[2]  # no tunesmith row in its round
