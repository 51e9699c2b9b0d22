"""How the CPU fast paths cut one planned micro-batch into forward passes.

Every example of a micro-batch is still trained in the same optimizer step, and the step's
loss is normalised by the step's total trained tokens, so how the examples are grouped into
forward passes changes float summation order, not the gradient. That makes the cut a pure
speed/memory choice, owned by a :class:`PassPolicy`:

- :class:`PassPolicy` itself is the reference: the planned order, in pieces of at most the
  micro-batch size (one pass per micro-batch unless an out-of-memory retry lowered it).
- :class:`LengthSortedPasses` (CPU): length-sorted padded passes (:func:`split_by_length`).
  On CPU a forward + backward pass costs ~30-45 tokens' worth beyond its tokens (mostly
  reading the weights again); cutting removes most padding (20% -> ~5% on the demo) but, at
  2 threads, gains memory rather than speed.
- :class:`PackedPasses` (CPU, with the grouped attention installed): each pass one packed
  row (:func:`pack_into_passes`), padded only up to a multiple of
  :data:`CPU_PASS_BUCKET_TOKENS`; the demo's ~2.6 padded passes per step become ~1.1. Its
  attention runs per example (``packed_attention.py``); eager would pay ``T^2``. The row
  stores the examples' common prompt prefix once (``data/shared_prefix.py``): the demo's
  passes carry 25% fewer tokens for the same loss and gradients.

On CUDA kernel launches make extra passes expensive, so only the reference runs there.
Measurements: benchmarks/RESULTS.md, "Training throughput vs TRL".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.data.dataset import Batch, collate
from tunesmith.data.packing import CPU_PASS_BUCKET_TOKENS, bucketed_length, pack_row
from tunesmith.data.render import Rendered
from tunesmith.data.shared_prefix import pack_shared_row

CPU_PASS_OVERHEAD_TOKENS = 32.0  # measured: 16 and 48 were equally fast, 128 lost the gain
# Most tokens per CPU pass: a memory-for-speed trade within what the memory plan already
# allows (the plan checks the whole micro-batch, so a cap only lowers the peak below it).
# SmolLM2-135M keeps ~1 MB of activations per token at a pass's peak (bf16, grouped attention).
# Measured on the demo with packed passes (12 steps, 2 threads): 640 tokens -> 1.08 passes per
# step, -8 to -10% per step and +220 MB peak RSS (1.62 vs 1.40 GiB) against 384 -> 2 passes;
# 768 made the demo's 13 of 110 steps of 672-768 tokens one pass instead of two (those steps
# 15.6 -> 12.7 s) at the bench's peak RSS within 1% (RESULTS.md, "Passes of up to 768 tokens").
CPU_PASS_MAX_TOKENS = 768
# Rows are padded to a multiple of CPU_PASS_BUCKET_TOKENS (data/packing.py says why).


@dataclass(frozen=True)
class PassPolicy:
    """The reference cut: the planned micro-batch in order, in pieces of at most ``size``."""

    def groups(self, planned: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
        """Example indices of each pass; together exactly ``planned``."""
        return [list(planned[j : j + size]) for j in range(0, len(planned), size)]

    def batch(self, examples: Sequence[Rendered], pad_id: int) -> Batch:
        """One pass's examples as a batch (right-padded rows)."""
        return collate(list(examples), pad_id)

    def passes(
        self,
        planned: Sequence[int],
        examples: Sequence[Rendered],
        lengths: Sequence[int],
        size: int,
        pad_id: int,
    ) -> list[Batch]:
        """The forward passes of one planned micro-batch, at most ``size`` examples each."""
        return [
            self.batch([examples[i] for i in g], pad_id)
            for g in self.groups(planned, lengths, size)
        ]


@dataclass(frozen=True)
class LengthSortedPasses(PassPolicy):
    """Length-sorted padded passes that waste the least padding (:func:`split_by_length`)."""

    overhead_tokens: float = CPU_PASS_OVERHEAD_TOKENS
    max_tokens: int | None = CPU_PASS_MAX_TOKENS

    def groups(self, planned, lengths, size):
        return split_by_length(planned, lengths, size, self.overhead_tokens, self.max_tokens)


@dataclass(frozen=True)
class PackedPasses(PassPolicy):
    """Each pass one packed row (:func:`pack_into_passes`), padded only to its length bucket.

    The padding is a segment of its own (``padded_position_ids``) that no trained token
    attends to and that takes no loss, so it changes the time of a pass, not its gradient.
    With ``share_prefix`` the row holds its examples' common prompt prefix once
    (:func:`~tunesmith.data.shared_prefix.pack_shared_row`); passes are still formed from the
    examples' full lengths, so a pass never exceeds ``max_tokens``.
    """

    max_tokens: int | None = CPU_PASS_MAX_TOKENS
    bucket: int = CPU_PASS_BUCKET_TOKENS
    share_prefix: bool = True

    def groups(self, planned, lengths, size):
        return pack_into_passes(planned, lengths, size, self.max_tokens)

    def batch(self, examples, pad_id):
        row = (pack_shared_row if self.share_prefix else pack_row)(list(examples))
        return collate(
            [row], pad_id, bucketed_length(len(row.input_ids), self.bucket, self.max_tokens)
        )


def split_by_length(
    indices: Sequence[int],
    lengths: Sequence[int],
    max_size: int,
    overhead_tokens: float | None,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Cut one planned micro-batch into forward passes that waste the least padding.

    Every example of the micro-batch is still trained in the same optimizer step, and the
    step's loss is normalised by the step's total trained tokens, so how the examples are
    grouped into forward passes does not change the gradient (only float summation order).
    This recovers most of the padding of random batches (~20% on the demo) without the
    quality cost of length-grouped *batches* (``group_by_length``), which changes which
    examples train together.

    The examples are sorted by length and cut into contiguous groups minimising
    ``sum(group size * longest length) + overhead_tokens * groups``: ``overhead_tokens`` is
    the fixed cost of one forward+backward pass expressed in tokens (Python and kernel
    dispatch), so short micro-batches are not shredded into many tiny passes.

    Args:
        indices: The planned micro-batch (example indices).
        lengths: Token count of every example.
        max_size: Most examples per pass (an OOM retry lowers it).
        overhead_tokens: Per-pass cost in tokens; None keeps the planned order and cuts it
            into equal pieces of at most ``max_size`` (the reference path).
        max_tokens: Most padded tokens per pass (a single longer example still gets its own
            pass): activation memory grows with a pass's tokens, so this bounds the peak.

    Returns:
        The groups, each a list of indices; together exactly ``indices``.
    """
    if overhead_tokens is None:
        return [list(indices[j : j + max_size]) for j in range(0, len(indices), max_size)]
    order = sorted(indices, key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest cover of order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(0, j - max_size) - 1, -1):
            padded = (j - i) * lengths[order[j - 1]]
            if max_tokens is not None and padded > max_tokens and j - i > 1:
                break  # longer groups ending at j only grow
            cost = best[i] + padded + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def pack_into_passes(
    indices: Sequence[int], lengths: Sequence[int], max_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Cut one micro-batch into as few packed forward passes as its bounds allow.

    Used on CPU, where a forward + backward pass costs ~30-45 tokens' worth beyond its
    tokens (:data:`CPU_PASS_OVERHEAD_TOKENS`) and a packed row has next to no padding: the
    demo's micro-batches of ~600 tokens run as ~1.0-1.1 packed passes instead of ~2.6 padded ones
    with ~5% padding (at the CPU bound of 768 tokens per pass). Each pass holds
    at most ``max_size`` examples and ``max_tokens`` tokens (an example longer than that runs
    alone). The number of passes comes from first-fit decreasing; the examples are then
    dealt, longest first, to the emptiest pass, so the passes are even and the activation
    peak (set by the largest pass) is as low as that count allows.

    Args:
        indices: The planned micro-batch (example indices).
        lengths: Token count of every example.
        max_size: Most examples per pass (an OOM retry lowers it).
        max_tokens: Most tokens per pass; None: no bound.

    Returns:
        The passes, each a list of indices in increasing order; together exactly ``indices``.
    """
    cap = max_tokens if max_tokens is not None else sum(lengths[i] for i in indices)
    order = sorted(indices, key=lambda i: (-lengths[i], i))

    def deal(count: int | None) -> list[list[int]]:
        load = [0] * (count or 0)
        members: list[list[int]] = [[] for _ in load]

        def fits(k: int, n: int) -> bool:
            return len(members[k]) < max_size and (load[k] + n <= cap or not members[k])

        for i in order:
            n = lengths[i]
            if count is None:  # first fit: the first pass with room, else a new one
                k = next((k for k in range(len(load)) if fits(k, n)), len(load))
            else:  # worst fit over `count` passes: the emptiest one with room
                k = min(
                    (k for k in range(count) if fits(k, n)),
                    key=lambda k: (load[k], k),
                    default=-1,
                )
                if k < 0:
                    return []
            if k == len(load):
                load.append(0)
                members.append([])
            load[k] += n
            members[k].append(i)
        return members

    first_fit = deal(None)
    even = deal(len(first_fit)) if first_fit else []
    # Worst fit can fail to place an example where first fit did; then first fit stands.
    chosen = even if len(even) == len(first_fit) and all(even) else first_fit
    return [sorted(p) for p in chosen]
