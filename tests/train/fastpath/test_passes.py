"""How a micro-batch is cut into forward passes (train/fastpath/passes.py): length-sorted
padded passes, packed passes, and the reference policy."""

import random

import pytest

from tunesmith.data.render import Rendered
from tunesmith.train.fastpath.passes import (
    LengthSortedPasses,
    PackedPasses,
    PassPolicy,
    bucketed_length,
    pack_into_passes,
    split_by_length,
)


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


def test_passes_cover_the_micro_batch_within_their_bounds():
    lengths = [90, 75, 60, 120, 30, 85, 70, 95]
    passes = pack_into_passes(range(8), lengths, max_size=8, max_tokens=384)
    assert sorted(i for p in passes for i in p) == list(range(8))
    loads = [sum(lengths[i] for i in p) for p in passes]
    # 625 tokens need 2 passes of <= 384; dealt evenly, not 384 + 241 as first fit leaves them.
    assert len(passes) == 2 and max(loads) <= 384 and max(loads) - min(loads) <= 60
    assert all(p == sorted(p) for p in passes)
    assert pack_into_passes(range(8), lengths, 8, 384) == passes  # deterministic


def test_passes_respect_the_example_count_and_let_a_long_example_run_alone():
    lengths = [500, 20, 20, 20, 20, 20]
    passes = pack_into_passes([5, 4, 3, 2, 1, 0], lengths, max_size=2, max_tokens=384)
    assert [0] in passes and all(len(p) <= 2 for p in passes)
    assert len(passes) == 4  # the long one alone, then 5 short ones two by two
    assert pack_into_passes(range(6), lengths, max_size=8, max_tokens=None) == [list(range(6))]


def _examples(lengths):
    return [Rendered(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in lengths]


def test_policies_cover_the_micro_batch_and_build_their_batches():
    lengths = [9, 30, 12, 31, 8, 29]
    examples, planned = _examples(lengths), [5, 0, 3, 1, 4, 2]
    reference = PassPolicy().passes(planned, examples, lengths, 4, pad_id=0)
    assert [b.input_ids.shape[0] for b in reference] == [4, 2]  # planned order, equal pieces
    sorted_passes = LengthSortedPasses(overhead_tokens=4, max_tokens=None).passes(
        planned, examples, lengths, 6, pad_id=0
    )
    ref_pad = sum(b.input_ids.numel() - b.num_tokens for b in reference)
    assert sum(b.input_ids.numel() - b.num_tokens for b in sorted_passes) < ref_pad
    packed = PackedPasses(max_tokens=64, bucket=1).passes(planned, examples, lengths, 6, pad_id=0)
    assert all(b.input_ids.shape[0] == 1 and b.num_tokens == b.input_ids.numel() for b in packed)
    assert all(b.position_ids is not None for b in packed)
    for passes in (reference, sorted_passes, packed):
        assert sum(b.num_tokens for b in passes) == sum(lengths)


def test_packed_rows_are_padded_to_their_length_bucket_as_a_segment_of_their_own():
    """A new row length every step would build new matmul primitives every step (module note)."""
    lengths = [9, 30, 12, 31, 8, 29]
    examples = _examples(lengths)
    (row,) = PackedPasses(max_tokens=None, bucket=32).passes(
        range(6), examples, lengths, 6, pad_id=0
    )
    assert row.input_ids.shape == (1, 128) and row.num_tokens == sum(lengths) == 119
    assert row.num_trained == sum(lengths) - len(lengths)  # padding takes no loss
    pads = row.position_ids[0, 119:]
    assert pads.tolist() == list(range(9))  # restarts at 0: no example attends to it
    exact = PackedPasses(max_tokens=None, bucket=1).passes(range(6), examples, lengths, 6, 0)
    assert exact[0].input_ids.shape == (1, 119)


def test_packed_passes_store_a_shared_prompt_prefix_once():
    ignore = -100
    examples = [
        Rendered([1, 2, 3, 4, *range(10, 10 + n)], [ignore] * 5 + list(range(11, 10 + n)))
        for n in (6, 3, 5)
    ]  # a 4-token untrained prompt opening, then each example's own tokens
    lengths = [len(e.input_ids) for e in examples]
    (shared,) = PackedPasses(max_tokens=None, bucket=1).passes(range(3), examples, lengths, 3, 0)
    assert shared.input_ids[0, :5].tolist() == [1, 2, 3, 4, 10]
    assert shared.num_tokens == sum(lengths) - 2 * 4 and shared.num_examples == 3
    policy = PackedPasses(max_tokens=None, bucket=1, share_prefix=False)
    (plain,) = policy.passes(range(3), examples, lengths, 3, 0)
    assert plain.num_tokens == sum(lengths) and plain.num_trained == shared.num_trained


@pytest.mark.parametrize(
    ("n", "cap", "want"),
    [(119, None, 128), (128, None, 128), (600, 640, 608), (630, 640, 640), (90, 100, 96), (97, 100, 100),
     (101, 100, 101)],  # a row over the cap (one long example) is not padded past it
)  # fmt: skip
def test_bucketed_length_rounds_up_but_never_past_the_pass_cap(n, cap, want):
    assert bucketed_length(n, 32, cap) == want
