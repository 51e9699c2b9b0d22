"""Attention over packed rows at the cost of the examples' own lengths, not the row's.

A packed row (``data/packing.py``) holds several examples one after another; transformers
gives it a ``(T, T)`` block-diagonal causal mask. Computing the scores under that mask costs
``T^2`` per head although only ``sum(len_i^2)`` entries are attended: for a CPU pass of eight
~75-token examples, eight times the work of attending each example alone.

:class:`PackedLayout` instead gathers each example's queries, keys and values into a padded
``(examples, longest, ...)`` layout, with one ``index_copy`` per tensor, so the attention runs
per example exactly as for a padded batch, and gathers the outputs back to the row. Only the
attention sees the padding; the projections and MLPs, where the time goes, run on the packed
row without any. Padding slots are zeros: as keys they are masked, as queries their
outputs are dropped. Both moves are copies to and from distinct rows (``index_copy`` and
``index_select``), each the other's backward.

The row's own padding tokens (its tail up to the length bucket, ``data/dataset.collate``) are
a segment of their own in the position ids, and would be laid out as one more example. Given
the batch's 2D mask (``packing.PADDING_KWARG``), the layout puts them instead in the free slots
after the shortest example: there they come after every real token of that example, so the
causal mask hides them from all real queries, and what their own queries compute is never
read (no loss is taken there, so their gradients are zero). A pass of eight examples then
lays out eight, not nine.

A row that stores a prompt prefix once (``data/shared_prefix.py``; a preference pair's prompt,
``objectives/packed_rows.py``) is laid out the same way, each example continuing a prefix
getting the prefix's keys and values copied into its first slots: its attention is then the
one it has in its own unshared row.

It applies only where it computes exactly what the given mask says for every real token (the
padding tokens' own outputs, above, are the one exception): the mask must equal the
block-causal mask of the row's position ids (a new example starts where positions do not
advance by one, transformers' ``find_packed_sequence_indices`` rule; one after the first that
starts at ``p > 0`` also sees its group's first ``p`` tokens, ``packing.block_causal``). That is
checked once per forward pass, and any other mask (padding, a key prefix, a cache) keeps the reference
path of :func:`tunesmith.train.fastpath.attention.grouped_attention`.

In that layout every example's mask is the plain causal one (query slot ``p`` sees key slots
``0 .. p``), so where tunesmith's CPU kernels are built (:mod:`~tunesmith.train.fastpath.native`)
:func:`causal_attention` takes the scores from a plain ``bmm`` and one kernel pass each way
scales, masks and normalizes them, reading and exponentiating only the keys each query sees:
the additive mask, ``baddbmm``'s read of it and half the softmax's work are gone. Where the
scale is a power of two (``1/sqrt(64)``) the scaled scores are the same as
``baddbmm(mask, q, kᵀ, alpha=scale)``'s and the probabilities and gradients are within one bf16
rounding of ``softmax``'s (its row sums may be added in another order; on the AMX Xeon they were
equal bit for bit); elsewhere within the rounding of the scaled scores, which eager rounds to
bf16 first (``tests/train/fastpath/test_native.py``).

On a CPU with AMX tiles or AVX512-BF16 the whole attention is one kernel call each way instead
(:mod:`~tunesmith.train.fastpath.fused_attention`): each 32-query chunk's scores stay in an fp32
buffer in cache, and the backward recomputes the probabilities from each query's
log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunesmith.data.packing import Segments, block_causal, segments
from tunesmith.train.fastpath import fused_attention, native


class _SelectRows(torch.autograd.Function):
    """``x.index_select(0, index)`` for an index without repeats; ``source`` is its inverse
    (the row of the result each row of ``x`` went to, -1 for none).

    autograd's backward of ``index_select`` is a scatter-add (it must allow repeats), which
    took ~15% of a packed attention call on CPU; with distinct rows it is a plain copy, and
    with tunesmith's CPU kernels one gather by the inverse.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, source)  # source has a row for each of x's
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, source = ctx.saved_tensors
        if native.runs_on(grad, any_dtype=True):
            return native.kernels().gather_rows(grad.contiguous(), source), None, None
        out = grad.new_zeros((source.shape[0], *grad.shape[1:]))
        return out.index_copy_(0, index, grad), None, None


class _PlaceRows(torch.autograd.Function):
    """Rows of ``x`` placed at distinct ``slots`` of a zero ``(len(source), d)`` tensor, and rows
    ``shared_rows`` (a shared prefix's keys or values) also copied to ``shared_slots``;
    ``source`` is the same placement read the other way (each slot's row of ``x``, -1 for a
    zero slot), which tunesmith's CPU kernels gather in one pass.

    The backward of the plain placement is an ``index_select``. A prefix row's gradient is the
    sum over all its copies, added in fp32 (or wider) and rounded once; autograd's chain would
    round after each. ``shared_rows`` come sorted, a row's copies adjacent (the kernels' sum
    walks them as runs; :func:`_shared_prefix_slots` sorts them). (The shared row's bf16
    gradients are still ~10% further from fp32 than the unshared row's: the prefix carries one
    rounded sum where the copies carried separately rounded parts; benchmarks/RESULTS.md, "A
    shared prompt prefix stored once".)
    """

    @staticmethod
    def forward(ctx, x, slots, shared_rows, shared_slots, source):
        ctx.save_for_backward(slots, shared_rows, shared_slots)
        return place_rows(x, slots, shared_rows, shared_slots, source)

    @staticmethod
    def backward(ctx, grad):
        return place_rows_backward(grad, *ctx.saved_tensors), None, None, None, None


def place_rows(x, slots, shared_rows, shared_slots, source) -> torch.Tensor:
    """:class:`_PlaceRows`' forward: ``x``'s rows at their slots (and the shared copies)."""
    if native.runs_on(x, any_dtype=True):
        return native.kernels().gather_rows(x.contiguous(), source)
    out = x.new_zeros((source.shape[0], x.shape[1]))
    out.index_copy_(0, slots, x)
    if shared_rows is not None:
        out.index_copy_(0, shared_slots, x.index_select(0, shared_rows))
    return out


def place_rows_backward(grad, slots, shared_rows, shared_slots) -> torch.Tensor:
    """:class:`_PlaceRows`' backward: each row's gradient, its shared copies' summed in."""
    kernels = native.kernels() if native.runs_on(grad, any_dtype=True) else None
    if kernels is not None:
        grad = grad.contiguous()
        g = kernels.gather_rows(grad, slots)
    else:
        g = grad.index_select(0, slots)
    if shared_rows is None:
        return g
    if kernels is not None and grad.dtype == torch.bfloat16:  # the same sums, bit for bit
        kernels.add_copies_(g, grad, shared_rows, shared_slots)
        return g
    wide = torch.promote_types(grad.dtype, torch.float32)  # fp32, or fp64 if given
    copies = grad.index_select(0, shared_slots).to(wide)
    return g.to(wide).index_add_(0, shared_rows, copies).to(grad.dtype)


class _CausalSoftmax(torch.autograd.Function):
    """``softmax(scale * scores)`` under the causal mask of the layout's ``(rows, g*L, L)``
    scores (row ``r`` is slot ``r % L``), by tunesmith's CPU kernels; 0 past the diagonal."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, scale: float) -> torch.Tensor:
        probs = native.kernels().causal_softmax(scores, scale)
        ctx.save_for_backward(probs)
        ctx.scale = scale
        return probs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (probs,) = ctx.saved_tensors
        return native.kernels().causal_softmax_backward(grad.contiguous(), probs, ctx.scale), None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """The layout's attention, ``(n*kv, g*L, d)`` from :meth:`PackedLayout.gather`'s q, k, v,
    by the kernels; None where they do not run (not built, or not bf16 on CPU)."""
    if not native.runs_on(q, k, v):
        return None
    return torch.bmm(_CausalSoftmax.apply(torch.bmm(q, k.transpose(1, 2)), scale), v)


@dataclass
class PackedLayout:
    """Where each token of a ``(B, T)`` packed batch sits in a padded per-example layout.

    ``q_slots`` is ``(B*T, H)``: the row of token ``t``, head ``h`` among the ``(n, H, L)``
    padded query (and output) rows, ``(e * H + h) * L + p`` for the token at position ``p``
    of example ``e``. Heads are numbered ``kv_h * g + g_h`` (``repeat_kv``'s order), so a view
    of those rows as ``(n * kv, g * L)`` puts the queries of one K/V head in one block.
    ``kv_slots`` is ``(B*T, kv)`` among ``(n, kv, L)`` rows; ``mask`` the additive
    ``(1, g*L, L)`` mask. An example that continues its row's shared prefix
    (``data/shared_prefix.py``) also gets that prefix's keys and values in its first slots:
    row ``shared_rows[i]`` of the ``(B*T*kv, d)`` K/V rows goes to slot ``shared_slots[i]``.
    Padding slots stay zero: as keys they are masked, as queries their outputs are dropped.
    ``q_source`` and ``kv_source`` read the same placements from the slots' side: each slot's
    row (-1 for a padding slot).
    """

    n: int
    longest: int
    q_slots: torch.Tensor
    kv_slots: torch.Tensor
    mask: torch.Tensor
    shared_rows: torch.Tensor | None = None
    shared_slots: torch.Tensor | None = None
    q_source: torch.Tensor = field(init=False)
    kv_source: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        def source(slots: torch.Tensor, shared: bool) -> torch.Tensor:
            out = slots.new_full((self.n * slots.shape[1] * self.longest,), -1)
            out[slots.view(-1)] = torch.arange(slots.numel(), device=slots.device)
            if shared and self.shared_rows is not None:
                out[self.shared_slots] = self.shared_rows
            return out

        self.q_source = source(self.q_slots, False)
        self.kv_source = source(self.kv_slots, True)

    def gather(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """``(B, H, T, d)`` / ``(B, kv, T, d)`` -> ``(n*kv, g*L, d)``, ``(n*kv, L, d)`` x2."""
        k, v = self._keys(key, value)
        q = self._placed(query, self.q_slots, self.q_source, False)
        return q.view(k.shape[0], -1, k.shape[-1]), k, v

    def attend_fused(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """The causal attention where ``fused_attention.runs``, ``(B, T, H, d)``: the keys and
        values placed, the queries and the output read and written in the tokens' own rows."""
        k, v = self._keys(key, value)
        B, H, T, d = query.shape
        rows = query.transpose(1, 2).reshape(-1, d)  # (B*T*H, d): a view of the projection
        return fused_attention.attend(rows, self.q_source, k, v, scale).view(B, T, H, d)

    def _keys(self, key: torch.Tensor, value: torch.Tensor):
        rows, d = self.n * key.shape[1], key.shape[-1]
        k = self._placed(key, self.kv_slots, self.kv_source, True).view(rows, -1, d)
        return k, self._placed(value, self.kv_slots, self.kv_source, True).view(rows, -1, d)

    def _placed(self, x: torch.Tensor, slots: torch.Tensor, source: torch.Tensor, shared: bool):
        # (B, heads, T, d) -> (B*T*heads, d) rows: a view when heads are laid out per token.
        rows = x.transpose(1, 2).reshape(-1, x.shape[-1])
        copies = (self.shared_rows, self.shared_slots) if shared else (None, None)
        return _PlaceRows.apply(rows, slots.view(-1), *copies, source)

    def scatter(self, out: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
        """``(n*kv, g*L, d)`` attention output -> ``(B, T, H, d)`` (transformers' layout)."""
        d = out.shape[-1]
        heads = self.q_slots.shape[1]
        rows = _SelectRows.apply(out.reshape(-1, d), self.q_slots.view(-1), self.q_source)
        return rows.view(batch, seq, heads, d)


def build_layout(
    position_ids: torch.Tensor,
    heads: int,
    kv_heads: int,
    dtype: torch.dtype,
    tokens: torch.Tensor | None = None,
) -> PackedLayout | None:
    """The layout of a packed ``(B, T)`` batch; None when no row holds more than one example.

    ``tokens``: the batch's ``(B, T)`` mask, 0 at padding; where the padding is whole segments
    at the rows' ends and fits after the shortest example, it goes there (see the module doc).
    """
    B, T = position_ids.shape
    device = position_ids.device
    seg = segments(position_ids)
    per_row = seg.ids[:, -1] + 1
    # Global example id of every token, and its slot: its index in its example, after the
    # shared prefix (of P tokens) that an example continuing one gets in its first P slots.
    offsets = torch.cumsum(per_row, 0) - per_row
    example = (seg.ids + offsets[:, None]).view(-1)  # (B*T,)
    pos = seg.offsets.view(-1)
    example, pos = _fold_padding(example, pos, _padding(seg, tokens))
    n = int(example.max()) + 1
    if n == B:
        return None
    L = int(pos.max()) + 1
    head = torch.arange(heads, device=device)
    kv_head = torch.arange(kv_heads, device=device)
    q_slots = (example[:, None] * heads + head[None, :]) * L + pos[:, None]
    kv_slots = (example[:, None] * kv_heads + kv_head[None, :]) * L + pos[:, None]
    shared_rows, shared_slots = _shared_prefix_slots(seg, example, kv_heads, L)
    # Every example's tokens fill its slots from 0 on (its shared prefix first), and its padding
    # comes after its last token, so the plain causal mask hides the padding keys from every
    # real query. One (g*L, L) mask (the g query heads of a K/V head stacked) broadcasts over
    # all examples and K/V heads.
    keep = torch.ones((L, L), dtype=torch.bool, device=device).tril()
    mask = torch.zeros((L, L), dtype=dtype, device=device).masked_fill_(
        ~keep, torch.finfo(dtype).min
    )
    mask = mask.repeat(heads // kv_heads, 1)[None]  # (1, g*L, L)
    return PackedLayout(n, L, q_slots, kv_slots, mask, shared_rows, shared_slots)


def _padding(seg: Segments, tokens: torch.Tensor | None) -> torch.Tensor | None:
    """``(B*T,)`` True at padding, where ``tokens`` marks some and all of it is whole segments at
    the rows' ends (as ``collate`` pads); None otherwise, and then nothing is folded."""
    if tokens is None or tokens.shape != seg.ids.shape:
        return None
    pad = tokens == 0
    real = (~pad).sum(1)  # (B,) real tokens per row, all before the padding
    T = pad.shape[1]
    suffix = torch.arange(T, device=pad.device)[None, :] >= real[:, None]
    if not bool(pad.any()) or not torch.equal(pad, suffix) or bool((real == 0).any()):
        return None
    rows = (real < T).nonzero().squeeze(1)
    if not bool(seg.starts[rows, real[rows]].all()):  # a real example runs into the padding
        return None
    return pad.view(-1)


def _fold_padding(example: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor | None):
    """``(example, pos)`` with the padding's segments dropped from the examples and its tokens
    moved after the shortest example's; unchanged where there is no padding to fold or it does
    not fit before the longest example's length (one more example is then cheaper to lay out
    than a longer layout)."""
    if pad is None:
        return example, pos
    real = ~pad
    used = torch.zeros(int(example.max()) + 1, dtype=torch.bool, device=example.device)
    used[example[real]] = True
    renumber = torch.cumsum(used, 0) - 1  # the real examples' ids, without the padding's
    slots = torch.zeros(int(used.sum()), dtype=pos.dtype, device=pos.device)
    slots.scatter_reduce_(0, renumber[example[real]], pos[real] + 1, "amax")  # each one's slots
    shortest = int(slots.argmin())
    start, count = int(slots[shortest]), int(pad.sum())
    if start + count > int(slots.max()):
        return example, pos
    example, pos = renumber[example], pos.clone()
    example[pad] = shortest
    pos[pad] = torch.arange(start, start + count, device=pos.device)
    return example, pos


def _shared_prefix_slots(seg: Segments, example, kv_heads: int, L: int):
    """``(rows, slots)`` that copy each shared prefix's K/V rows (``(B*T*kv, d)`` numbering)
    into the first slots of every example continuing it; ``(None, None)`` when none does.
    Sorted by row, a row's copies in the order of the examples continuing it (the order their
    gradients are added in)."""
    B, T = seg.ids.shape
    starts = seg.starts & (seg.shared > 0)
    if not bool(starts.any()):
        return None, None
    b, t = starts.nonzero(as_tuple=True)
    count = seg.shared[b, t]  # (m,) prefix length of each continuing example
    first = b * T + seg.heads[b, t]  # (m,) where its group's first example starts, flat
    prefix = torch.arange(int(count.max()), device=example.device)
    take = prefix[None, :] < count[:, None]  # (m, longest prefix)
    token = (first[:, None] + prefix[None, :])[take]  # the prefix tokens, flat over B*T
    owner = example.view(B, T)[b, t][:, None].expand_as(take)[take]
    slot = prefix[None, :].expand_as(take)[take]
    kv_head = torch.arange(kv_heads, device=example.device)
    rows = (token[:, None] * kv_heads + kv_head).reshape(-1)
    slots = ((owner[:, None] * kv_heads + kv_head) * L + slot[:, None]).reshape(-1)
    order = torch.argsort(rows, stable=True)
    return rows[order], slots[order]


def mask_is_block_causal(mask: torch.Tensor, position_ids: torch.Tensor) -> bool:
    """Whether a ``(B, 1, T, T)`` additive or boolean mask is exactly the position ids' blocks."""
    B, T = position_ids.shape
    if mask.dim() != 4 or mask.shape[0] != B or mask.shape[1] != 1 or mask.shape[2:] != (T, T):
        return False
    allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
    return bool(torch.equal(allowed, block_causal(position_ids)))


class LayoutCache:
    """The layout of the current forward pass: built and checked once, used by every layer.

    Keyed on the identity and version of the mask and position ids (the model passes the
    same tensors to every layer of a pass); holding them keeps their memory from being
    reused by other tensors while the key is alive.
    """

    def __init__(self) -> None:
        self.key: tuple = ()
        self.sources: tuple = ()
        self.layout: PackedLayout | None = None

    def get(
        self, mask, position_ids, heads: int, kv_heads: int, dtype, tokens=None
    ) -> PackedLayout | None:
        """The pass's layout; ``tokens`` is its 2D mask where the caller passed one."""

        def version(t):
            if t is None:
                return None
            return 0 if t.is_inference() else t._version  # inference tensors have none

        sources = (mask, position_ids, tokens)
        key = (*map(version, sources), mask.shape, heads, kv_heads, dtype)
        same = len(self.sources) == 3 and all(
            a is b for a, b in zip(self.sources, sources, strict=True)
        )
        if not same or self.key != key:
            self.sources, self.key = sources, key
            self.layout = None
            if mask_is_block_causal(mask, position_ids):
                self.layout = build_layout(position_ids, heads, kv_heads, dtype, tokens)
        return self.layout
