"""Packed rows that store the examples' common prompt prefix once.

Instruction data repeats its prompt's start in every record: the chat template's opening, a
system prompt (SmolLM2 and Qwen templates add a default one), a fixed instruction. In the
demo's clinic data the first 22 tokens of every example are the same, 29% of an example, so
a packed row of eight examples computes the same 22 tokens eight times.

A shared row holds that prefix once, then each example's remaining tokens::

    tokens:     [ prefix (P) ][ rest of ex. 1 ][ rest of ex. 2 ] ...
    positions:   0 .. P-1      P .. P+n1-1      P .. P+n2-1

An example after the first starts at position ``P``, which says "I continue the row's first
``P`` tokens"; the mask (``packing.block_causal``) lets it attend to them and to its own
earlier tokens, nothing else. Every token then sees exactly the keys, at exactly the
positions, it sees in its own unshared row, so the loss and the gradients are the unshared
ones up to float rounding; only the repeated prefix tokens are not computed again. (In bf16
the prefix's gradient is one rounded sum where the copies' were rounded apart, which leaves a
step's LoRA gradients ~10% further from fp32's: benchmarks/RESULTS.md.)

The prefix stops before the first trained label of every example (and before its last
token), so no loss is ever taken on a prefix token or on the first token of a rest: those
are the positions whose next-token prediction would differ between the examples.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunesmith.data.packing import PackedRow, pack_row
from tunesmith.data.render import IGNORE_INDEX, Rendered


def shareable_prefix(parts: Sequence[Rendered]) -> int:
    """How many leading tokens ``parts`` can share in one row; 0 for fewer than two parts.

    The longest common token prefix, cut so that in every part the prefix and the token after
    it carry no label (a part trained from its first token shares nothing) and at least one
    token of its own remains.
    """
    if len(parts) < 2:
        return 0
    first = parts[0].input_ids
    shared = len(first)
    for p in parts:
        untrained = next((i for i, label in enumerate(p.labels) if label != IGNORE_INDEX), None)
        limit = len(p.input_ids) - 1 if untrained is None else untrained - 1
        shared = min(shared, limit)
        ids = p.input_ids
        n = 0
        while n < shared and ids[n] == first[n]:
            n += 1
        shared = n
    return max(shared, 0)


def pack_shared_row(parts: Sequence[Rendered]) -> PackedRow:
    """One packed row with the parts' :func:`shareable_prefix` stored once (the module
    docstring's layout; a plain packed row when they share nothing)."""
    return pack_row(parts, shareable_prefix(parts))
