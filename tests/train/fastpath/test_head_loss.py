"""The fast paths' last step: the fused head loss with its products in row blocks."""

from __future__ import annotations

import torch
from torch import nn

from tests.loss.test_head_ce import ROWS, _head
from tests.train.fastpath.test_row_split import forced  # noqa: F401 - fixture
from tunesmith.loss.head_ce import fuses, head_cross_entropy_sum
from tunesmith.train.fastpath import fast_head_loss, frozen_linear, row_split


def test_the_frozen_linear_fast_class_fuses():
    model = nn.Sequential()
    model.lm_head = _head(torch.bfloat16)[0]
    frozen_linear.install(model)
    h = torch.randn(ROWS, 48, dtype=torch.bfloat16, requires_grad=True)
    assert type(model.lm_head) is not nn.Linear and fuses(model.lm_head, h)


def test_row_blocks_give_the_whole_products_loss_and_gradient(forced, monkeypatch):  # noqa: F811
    monkeypatch.setattr(row_split, "_SPLITS", row_split.RowSplits(None))  # no table on disk
    # 300 rows (320 once bucketed): the fixture's 256-row blocks cut both products in two.
    head, h, t = _head(torch.bfloat16, vocab=300, width=48, rows=300)
    whole_h = h.detach().clone().requires_grad_()
    blocks = fast_head_loss(head, h, t)
    whole = head_cross_entropy_sum(head, whole_h, t)  # torch.mm, one product each way
    blocks.backward()
    whole.backward()
    assert forced == [(320, 48), (320, 300)]  # measured (and cut) forward and backward
    torch.testing.assert_close(blocks, whole, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h.grad, whole_h.grad, rtol=2e-2, atol=1e-3)
