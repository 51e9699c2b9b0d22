"""A rank's slice of the global batch plan: N ranks see what one process sees."""

import pytest
import torch

from tunesmith.data.dataset import Batch, batch_plan
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.distributed import DistContext, rank_slice
from tunesmith.distributed.batches import align_micro_batches, stand_in


@pytest.mark.parametrize("n,world", [(8, 2), (7, 2), (9, 4), (3, 3), (5, 1)])
def test_slices_partition_the_planned_batch_in_order(n, world):
    planned = list(range(100, 100 + n))
    shares = [rank_slice(planned, r, world) for r in range(world)]
    assert all(not stand for _, stand in shares)
    assert [i for share, _ in shares for i in share] == planned  # contiguous, in order
    sizes = [len(share) for share, _ in shares]
    assert max(sizes) - min(sizes) <= 1


def test_empty_share_gets_a_flagged_stand_in():
    assert rank_slice([4, 5], 0, 3) == ([4], False)
    assert rank_slice([4, 5], 1, 3) == ([5], False)
    assert rank_slice([4, 5], 2, 3) == ([4], True)
    with pytest.raises(ValueError):
        rank_slice([1], 2, 2)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_ranks_at_batch_b_cover_one_process_at_batch_world_times_b(group_by_length):
    lengths = [(7 * i) % 23 + 1 for i in range(45)]
    world, b = 3, 4
    single = batch_plan(lengths, world * b, seed=5, epoch=1, group_by_length=group_by_length)
    for planned in single:
        union = [i for r in range(world) for i in rank_slice(planned, r, world)[0]]
        assert union == planned


def _batch(rows: int) -> Batch:
    ids = torch.arange(rows * 4).reshape(rows, 4)
    return Batch(ids, torch.ones_like(ids), ids.clone())


def test_stand_in_trains_on_no_token():
    b = _batch(2)
    s = stand_in(b)
    assert s.num_trained == 0 and torch.equal(s.input_ids, b.input_ids)
    assert (s.labels == IGNORE_INDEX).all() and b.num_trained > 0  # the original is untouched


def test_align_is_a_no_op_for_one_process():
    batches = [_batch(1)]
    assert align_micro_batches(batches, DistContext()) is batches
