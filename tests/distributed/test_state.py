"""Full tensors out of / back into parameters: plain tensors pass through unchanged."""

import torch

from tunesmith.distributed.state import (
    full,
    full_optimizer_state,
    shard_like,
    shard_optimizer_state,
)


def test_plain_tensors_pass_through():
    t = torch.randn(3, 2)
    assert full(t) is t and shard_like(t, torch.zeros(3, 2)) is t


def test_optimizer_state_round_trips_in_one_process():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    sd = full_optimizer_state(opt)
    ref = opt.state_dict()
    assert torch.equal(sd["state"][0]["exp_avg"], ref["state"][0]["exp_avg"])
    back = shard_optimizer_state(sd, opt)
    assert torch.equal(back["state"][0]["exp_avg_sq"], ref["state"][0]["exp_avg_sq"])
    assert back["param_groups"] == ref["param_groups"]
