"""Sequence packing: several short examples per row, with no attention across their boundaries.

A packed row concatenates tokenized examples up to ``seq_len`` tokens. Three things keep the
examples independent, so that the packed loss equals the sum of the unpacked losses:

* position ids restart at 0 for every example (RoPE sees each one as it would alone);
* attention is block-diagonal causal: a token attends only to earlier tokens of its own
  example. transformers (>= 4.54, ``masking_utils.find_packed_sequence_indices``) derives
  exactly this mask from restarting position ids when the 2D attention mask is ``None``, for
  sdpa, eager, flex and flash attention (flash runs varlen kernels from the position ids:
  padding-free). For a model whose mask is not built by ``masking_utils``, an explicit 4D
  block-diagonal mask is passed instead (:func:`block_causal_mask`);
* the label of each example's first token is ``IGNORE_INDEX``: it would be predicted from the
  previous example's last token.

A row may also store a prompt prefix once for the examples that share it: an example whose
positions start at ``p > 0`` continues the first ``p`` tokens of its group, the row's last
example before it that starts at position 0, and the mask lets it see them (:class:`Segments`,
:func:`block_causal`). ``data/shared_prefix.py`` makes SFT rows of one group (the examples'
common template opening); ``objectives/packed_rows.py`` makes preference rows of one group
per prompt (a pair's chosen and rejected completions). transformers knows no such rows, so
they always get the explicit 4D mask.

Packing is a pure function of the example lengths, so a resumed run sees the same rows.
"""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tunesmith.data.render import IGNORE_INDEX, Rendered
from tunesmith.errors import ConfigError

# transformers hands keyword arguments it does not know on to the attention function. A packed
# batch passes its 2D mask (1 = token, 0 = padding) that way to the attention implementations
# named here, which leave the padding out of their work (tunesmith's grouped CPU attention,
# train/fastpath/attention.py). Only they get it: another model's forward may not accept an
# unknown keyword.
PADDING_KWARG = "tunesmith_token_mask"
PADDING_AWARE_ATTENTION = frozenset({"tunesmith_cpu"})


# Packed rows are padded up to a multiple of this many tokens. oneDNN builds (JIT-compiles)
# a matmul primitive per shape and keeps 1024 in its cache; a packed row of a new length every
# step means new primitives for every projection, forward and backward, every step (with the
# cache off a demo step ran 3.7x slower: building them is that dear). With every length its
# own, 70 demo steps slowed ~12% from the first half to the second and peak RSS grew 1.3 ->
# 2.6 GB; with lengths bucketed to 32 tokens (~2.5% padding) the 70 steps took 7% less time,
# the second half 11% less, at 24% less peak RSS (16 and 64 gained less: more shapes, more
# padding). Padded passes (LengthSortedPasses) are not bucketed: their ~3 short rows per pass
# would carry 25% more tokens, which cost more than the reuse saves (measured, prefix tuning).
# Measurements: benchmarks/RESULTS.md, "Bucketed pass lengths". The CPU fast paths' packed passes
# (train/fastpath/passes.py) and the preference objectives' packed rows use it.
CPU_PASS_BUCKET_TOKENS = 32


@dataclass(frozen=True)
class PackedRow(Rendered):
    """Examples concatenated into one row; ``position_ids`` restart at each example."""

    position_ids: list[int]
    lengths: tuple[int, ...]  # row tokens of each example, in row order


def pack_row(parts: Sequence[Rendered], shared: int = 0) -> PackedRow:
    """Concatenate examples; the first label of each is ignored (see the module docstring).

    ``shared``: the row stores the parts' first ``shared`` tokens once, which they must have
    in common, untrained (``data/shared_prefix.py`` decides how many); each part after them
    continues at position ``shared``. ``lengths`` are each part's row tokens.
    """
    ids: list[int] = list(parts[0].input_ids[:shared]) if parts else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    positions: list[int] = list(range(len(ids)))
    lengths = []
    for p in parts:
        n = len(p.input_ids)
        ids += p.input_ids[shared:]
        labels += [IGNORE_INDEX, *p.labels[shared + 1 :]]
        positions += range(shared, n)
        lengths.append(n - shared)
    if lengths:
        lengths[0] += shared
    return PackedRow(ids, labels, positions, tuple(lengths))


def bucketed_length(n: int, bucket: int, cap: int | None) -> int:
    """``n`` rounded up to a multiple of ``bucket``, never past ``cap`` (the bound the memory
    plan allows a pass); a row over ``cap`` already (one long example) keeps its length."""
    rounded = -(-n // bucket) * bucket
    if cap is None:
        return rounded
    return n if n > cap else min(rounded, cap)


def pack_examples(examples: Sequence[Rendered], seq_len: int) -> list[PackedRow]:
    """Pack examples into rows of at most ``seq_len`` tokens (best-fit decreasing).

    Best-fit decreasing puts each example, longest first, into the open row with the least
    room that still fits it; like first-fit decreasing it needs at most about 11/9 of the
    optimal number of rows (Johnson et al. 1974, "Worst-case performance bounds for simple
    one-dimensional packing algorithms"), so little padding is left. Ties keep the input
    order, so the result is deterministic; within a row examples keep their input order.

    Raises:
        ValueError: an example is longer than ``seq_len`` (tokenization truncates to it).
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, row index) of open rows
    for i in order:
        n = len(examples[i].input_ids)
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens, more than seq_len {seq_len}")
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            free, r = room.pop(k)
        else:
            free, r = seq_len, len(rows)
            rows.append([])
        rows[r].append(i)
        if free - n > 0:
            bisect.insort(room, (free - n, r))
    return [pack_row([examples[i] for i in sorted(r)]) for r in rows]


def padded_position_ids(examples: Sequence[Rendered], T: int) -> torch.Tensor:
    """(B, T) position ids; padding forms a segment of its own that restarts at 0."""
    out = torch.zeros((len(examples), T), dtype=torch.long)
    for b, e in enumerate(examples):
        pos = list(getattr(e, "position_ids", None) or range(len(e.input_ids)))
        pos += range(T - len(pos))
        out[b] = torch.tensor(pos)
    return out


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) bool: True where a new example starts, i.e. where positions do not
    advance by one (the rule of transformers' ``find_packed_sequence_indices``); the first
    token of a row always starts one."""
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    starts[:, 0] = True
    return starts


@dataclass(frozen=True)
class Segments:
    """The examples of a ``(B, T)`` batch of packed rows, per token, from its position ids.

    ``starts``: a new example starts here (:func:`segment_starts`); ``ids``: the example's
    0-based index in its row; ``shared``: how many tokens of its group's first example the
    example continues; ``heads``: the row index where those tokens begin. A group is an
    example that starts at position 0 (or the row's first example) and the examples after it
    that start at a position ``p > 0``: each of those continues the group's first ``p``
    tokens, a prompt prefix they have in common, stored once (``data/shared_prefix.py``,
    ``objectives/packed_rows.py``); an example that starts a group shares nothing.
    ``offsets``: the token's index among the keys its example attends to, the shared prefix
    first, then the example's own tokens from its start.
    """

    starts: torch.Tensor
    ids: torch.Tensor
    shared: torch.Tensor
    heads: torch.Tensor
    offsets: torch.Tensor


def segments(position_ids: torch.Tensor) -> Segments:
    """The :class:`Segments` of a ``(B, T)`` batch of position ids."""
    starts = segment_starts(position_ids)
    index = torch.arange(position_ids.shape[1], device=position_ids.device)
    start_index = torch.where(starts, index, 0).cummax(-1).values
    start_position = position_ids.gather(-1, start_index)
    # Each token's group: the last example at or before it that starts at position 0 (the
    # row's first example heads one whatever its position).
    leads = starts & ((position_ids == 0) | (index == 0))
    heads = torch.where(leads, index, 0).cummax(-1).values
    shared = torch.where(start_index > heads, start_position.clamp(min=0), 0)
    offsets = index - start_index + shared
    return Segments(starts, starts.cumsum(-1) - 1, shared, heads, offsets)


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) example index per token, 0-based per row (:class:`Segments`)."""
    return segment_starts(position_ids).cumsum(-1) - 1


def shares_prefix(position_ids: torch.Tensor | None) -> bool:
    """Whether any example of a (B, T) batch continues the first tokens of its group."""
    return position_ids is not None and bool(segments(position_ids).shared.any())


def block_causal(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids -> (B, T, T) bool: True where a token may attend (its own example,
    causally, and the first tokens of its group that its example shares, :class:`Segments`)."""
    seg = segments(position_ids)
    T = position_ids.shape[1]
    causal = torch.ones((T, T), dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg.ids[:, :, None] == seg.ids[:, None, :]) & causal
    if bool(seg.shared.any()):
        keys = torch.arange(T, device=position_ids.device)[None, None, :]
        first, end = seg.heads[:, :, None], (seg.heads + seg.shared)[:, :, None]
        # The group's first example holds the shared tokens when the row was built by
        # shared_prefix.py or packed_rows.py; a key outside it is never shared, whatever the
        # positions say.
        lead = seg.ids.gather(-1, seg.heads)[:, :, None] == seg.ids[:, None, :]
        allowed |= (keys >= first) & (keys < end) & lead
    return allowed


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) position ids -> (B, 1, T, T) additive mask: 0 where attended, dtype-min elsewhere.

    The additive float form is what both eager and sdpa attention accept as a ready 4D mask.
    """
    allowed = block_causal(position_ids)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _causal_lm(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def native_packing(model) -> bool:
    """Whether the model builds its attention mask with transformers' ``masking_utils`` (which
    detects packed rows from position ids) with an attention implementation it knows."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    lm = _causal_lm(model)
    impl = getattr(lm.config, "_attn_implementation", None)
    module = inspect.getmodule(type(lm))
    return impl in ALL_MASK_ATTENTION_FUNCTIONS and "create_causal_mask" in vars(module or object)


def attention_inputs(model, attention_mask: torch.Tensor, position_ids: torch.Tensor | None):
    """The attention keyword arguments of a forward pass over a (possibly packed) batch."""
    if position_ids is None:
        return {"attention_mask": attention_mask}
    lm = _causal_lm(model)
    impl = getattr(getattr(lm, "config", None), "_attn_implementation", None)
    padding = {PADDING_KWARG: attention_mask} if impl in PADDING_AWARE_ATTENTION else {}
    if native_packing(model) and not shares_prefix(position_ids):
        # No 2D mask: transformers then derives the block-diagonal mask from position ids
        # (it knows no shared prefix: rows with one get the explicit mask below).
        return {"attention_mask": None, "position_ids": position_ids, "use_cache": False, **padding}
    dtype = (
        torch.get_autocast_dtype(position_ids.device.type)
        if torch.is_autocast_enabled(position_ids.device.type)
        else lm.dtype
    )
    return {
        "attention_mask": block_causal_mask(position_ids, dtype),
        "position_ids": position_ids,
        "use_cache": False,
        **padding,
    }


# Set on a causal LM (its base model under peft) by the CPU fast paths where they pack passes:
# the per-token head loss that scores its packed rows.
PACKED_SCORING = "_tunesmith_packed_scoring"
TokenNll = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def packed_scoring(model) -> TokenNll | None:
    """Where ``model``'s scoring passes run as packed rows (the CPU fast paths' packed passes
    are on, which they choose where the grouped attention runs and :func:`packable` holds):
    ``(head, hidden (N, C), targets (N,)) -> fp32 NLLs (N,)``, the head they run; else None."""
    return getattr(_causal_lm(model), PACKED_SCORING, None)


def allow_packed_scoring(model, token_nll: TokenNll) -> Callable[[], None]:
    """Make ``model``'s scoring passes packed rows with ``token_nll`` as their head (see
    :func:`packed_scoring`); returns the undo."""
    lm = _causal_lm(model)
    setattr(lm, PACKED_SCORING, token_nll)

    def undo() -> None:
        if PACKED_SCORING in vars(lm):
            delattr(lm, PACKED_SCORING)

    return undo


def packable(model, *, kv_prefix: bool = False) -> bool:
    """Whether the examples of a packed row stay apart under this model's method.

    Prompt-learning methods (prompt, prefix) and other key/value prefixes (MAM) put virtual
    tokens in front of the *row*, shared by all its examples, and peft ignores position ids
    for them; packing would silently train something else.
    """
    from peft import PeftModel

    prompt = (
        isinstance(model, PeftModel) and model.peft_config[model.active_adapter].is_prompt_learning
    )
    return not (prompt or kv_prefix)


def check_packable(model, *, kv_prefix: bool = False) -> None:
    """Refuse packing where examples of a row cannot be kept apart (see :func:`packable`).

    Raises:
        ConfigError: ``packing`` with such a method.
    """
    if not packable(model, kv_prefix=kv_prefix):
        raise ConfigError(
            "packing",
            True,
            "false with prefix/prompt-style methods (their virtual tokens would be shared by "
            "every example of a packed row)",
        )
