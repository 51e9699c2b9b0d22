"""Cutting a micro-batch into length-sorted forward passes (data.dataset.split_by_length)."""

import random

from tunesmith.data.dataset import split_by_length


def _padded(groups, lengths):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_reference_path_keeps_order_and_cuts_equal_pieces():
    assert split_by_length([4, 1, 3, 0, 2], [9] * 5, 2, None) == [[4, 1], [3, 0], [2]]
    assert split_by_length([4, 1, 3], [9] * 5, 8, None) == [[4, 1, 3]]


def test_every_example_once_and_no_group_above_max_size():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 16)
        lengths = [rng.randint(5, 300) for _ in range(40)]
        planned = rng.sample(range(40), n)
        max_size = rng.randint(1, 16)
        groups = split_by_length(planned, lengths, max_size, overhead_tokens=32)
        assert sorted(i for g in groups for i in g) == sorted(planned)
        assert all(1 <= len(g) <= max_size for g in groups)
        # Never worse than the reference cut at the same cost per pass.
        ref = split_by_length(planned, lengths, max_size, None)
        cost = _padded(groups, lengths) + 32 * len(groups)
        assert cost <= _padded(ref, lengths) + 32 * len(ref)


def test_overhead_trades_passes_for_padding():
    lengths = [10, 11, 12, 100, 101, 102, 200, 201]
    planned = list(range(8))
    # Free passes: one per example, no padding at all.
    assert split_by_length(planned, lengths, 8, 0) == [[i] for i in planned]
    # Cheap passes: one group per length cluster, nearly no padding.
    assert split_by_length(planned, lengths, 8, 5) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    # Expensive passes: a single one, padded to the longest.
    assert split_by_length(planned, lengths, 8, 10_000) == [planned]


def test_deterministic_with_ties():
    lengths = [7] * 6
    a = split_by_length([5, 2, 4, 0, 3, 1], lengths, 4, 32)
    assert a == split_by_length([5, 2, 4, 0, 3, 1], lengths, 4, 32)
    # Equal lengths: the fewest passes max_size allows, indices in sorted order.
    assert len(a) == 2 and [i for g in a for i in g] == [0, 1, 2, 3, 4, 5]


def test_max_tokens_bounds_every_pass_but_never_drops_a_long_example():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(5, 300) for _ in range(30)]
        planned = rng.sample(range(30), rng.randint(1, 12))
        groups = split_by_length(planned, lengths, 12, 32, max_tokens=256)
        assert sorted(i for g in groups for i in g) == sorted(planned)
        for g in groups:
            padded = len(g) * max(lengths[i] for i in g)
            assert padded <= 256 or len(g) == 1
