"""Dropout for CPU training whose mask costs a few integer ops instead of a Bernoulli draw each.

On the demo (SmolLM2-135M, LoRA on q/v, bf16 compute, 2 CPU threads) ``aten::bernoulli_``
behind peft's ``lora_dropout`` took ~8% of a training step: torch's CPU Bernoulli draws one
random number per element, and the bool mask is then promoted to bf16 by slow conversions,
forward and backward. Here one 64-bit word feeds four elements: its 16-bit lanes, with the
sign bit masked off, are uniform on ``[0, 2**15)``, and an element is kept when its lane is
``>= round(p * 2**15)`` (so ``p`` is honoured to within ``2**-15``). The comparison is done with
integer shifts and masks that produce the bit pattern of ``1.0`` or ``0.0`` in the input's
dtype directly, a free ``view`` away from a multiplicative mask. fp32 inputs use 32-bit lanes
(31 bits). The output is ``x * mask * (1 / (1 - p))`` in one ``addcmul``, rounded as
``torch.nn.Dropout`` rounds it; the backward multiplies by the same mask the same way.

The words are counter-based: word ``w`` of a mask is ``splitmix64(seed + (w + 1) * gamma)``
(the finalizer of Java's ``SplittableRandom``; Steele, Lea & Flood, OOPSLA 2014), and each mask
takes one 63-bit ``seed`` from torch's default generator, so ``torch.manual_seed`` and the
checkpointed RNG state make runs repeatable and resumable. A mask is then its seed: where
tunesmith's CPU kernels are built (:mod:`~tunesmith.train.fastpath.native`), a bf16 mask stays
a :class:`SeededMask` and one kernel pass, on every thread, computes the words, compares and
scales, forward and again backward, with the values of the dense mask bit for bit. (Drawing
the words from torch's generator ran serially, ~4 ns a word, and kept them for the backward:
benchmarks/RESULTS.md, "Dropout masks from a counter-based hash".)

On CUDA ``F.dropout`` is a fused kernel already, so :func:`install` is a CPU-only choice (made by
:func:`tunesmith.train.fastpath.apply_fast_paths`); the reference path is ``torch.nn.Dropout``
(``tests/train/fastpath/test_dropout.py`` checks the keep rate, the scale, the backward and eval
mode against it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunesmith.train.fastpath import native
from tunesmith.train.fastpath.patch import Patch, skipped

# dtype -> (integer dtype of the same width, bit pattern of 1.0 in that dtype, random bits used)
_LANES = {
    torch.bfloat16: (torch.int16, 0x3F80, 15),
    torch.float16: (torch.int16, 0x3C00, 15),
    torch.float32: (torch.int32, 0x3F800000, 31),
}


def _signed(u: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


_GAMMA, _MIX1, _MIX2 = map(_signed, (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shifted(z: torch.Tensor, k: int) -> torch.Tensor:
    """``z >> k`` as unsigned 64-bit (torch shifts int64 arithmetically)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _words(seed: int, count: int, device) -> torch.Tensor:
    """Words ``0 .. count - 1`` of the mask of ``seed``: splitmix64 of ``seed + (w + 1) * gamma``,
    in int64 arithmetic, which wraps as the kernels' unsigned arithmetic does."""
    z = torch.arange(1, count + 1, dtype=torch.int64, device=device).mul_(_GAMMA).add_(seed)
    z = (z ^ _shifted(z, 30)).mul_(_MIX1)
    z = (z ^ _shifted(z, 27)).mul_(_MIX2)
    return z ^ _shifted(z, 31)


def _word_count(n: int, bits: int) -> int:
    per_word = 64 // (bits + 1)
    return (n + per_word - 1) // per_word


def _seed() -> int:
    """One mask's seed, in ``[0, 2**63)``, from torch's default (CPU) generator."""
    return int(torch.empty((), dtype=torch.int64).random_())


def _threshold(p: float, bits: int) -> int:
    return round(p * (1 << bits))


def _keep(words: torch.Tensor, n: int, p: float, dtype: torch.dtype) -> torch.Tensor:
    int_dtype, one, bits = _LANES[dtype]
    uniform = words.view(int_dtype)[:n] & ((1 << bits) - 1)
    # (threshold - 1 - u) >> bits is -1 (all ones) where u >= threshold (kept) and 0 where
    # dropped; no intermediate leaves the lane's signed range.
    keep = ((_threshold(p, bits) - 1) - uniform) >> bits
    return (keep & one).view(dtype)


def _dense(seed: int, n: int, p: float, dtype: torch.dtype, device) -> torch.Tensor:
    return _keep(_words(seed, _word_count(n, _LANES[dtype][2]), device), n, p, dtype)


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device) -> torch.Tensor:
    """A tensor of ``1.0`` (kept, probability ``1 - p``) and ``0.0`` in ``dtype``."""
    return _dense(_seed(), shape.numel(), p, dtype, device).view(shape)


@dataclass(frozen=True)
class SeededMask:
    """A bf16 keep mask as its seed: what :func:`keep_mask` makes from ``seed``, computed and
    applied by tunesmith's CPU kernels in the same pass as the scaling (:func:`masked_scale`)."""

    seed: int
    p: float
    shape: torch.Size

    def reshape(self, *shape) -> SeededMask:
        return SeededMask(self.seed, self.p, torch.Size(shape[0] if len(shape) == 1 else shape))

    def dense(self, device="cpu") -> torch.Tensor:
        """The mask as :func:`keep_mask` makes it."""
        return _dense(self.seed, self.shape.numel(), self.p, torch.bfloat16, device).view(
            self.shape
        )


def draw_mask(shape: torch.Size, p: float, dtype: torch.dtype, device) -> torch.Tensor | SeededMask:
    """:func:`keep_mask`'s mask, kept as its seed where tunesmith's CPU kernels apply it (bf16
    on CPU): the same seed from the same generator, so the same mask."""
    if (
        dtype == torch.bfloat16
        and torch.device(device).type == "cpu"
        and native.kernels() is not None
    ):
        return SeededMask(_seed(), p, shape)
    return keep_mask(shape, p, dtype, device)


def masked_scale(x: torch.Tensor, mask: torch.Tensor | SeededMask, scale: float) -> torch.Tensor:
    """``x * mask * scale`` in one pass: ``addcmul`` computes ``0 + scale * x * mask`` in fp32
    and rounds once, which is exactly how ``torch.nn.Dropout`` rounds ``x * mask * scale``
    (``mask`` is 0 or 1). Folding ``scale`` into the mask instead would round it to bf16
    (1/0.95 -> 1.0547, a 0.2% bias). A :class:`SeededMask` is applied by the kernels with the
    same arithmetic, or made dense where they are off."""
    if isinstance(mask, SeededMask):
        if native.runs_on(x):
            threshold = _threshold(mask.p, _LANES[torch.bfloat16][2])
            scaled = native.kernels().dropout_scale(x.contiguous(), mask.seed, threshold, scale)
            return scaled.view(x.shape)
        mask = mask.dense(x.device).view(x.shape)
    return torch.addcmul(x.new_zeros(()), x, mask, value=scale)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, scale: float):
        ctx.mask, ctx.scale = mask, scale  # a tensor or the seed of one; not an output
        return masked_scale(x, mask, scale)

    @staticmethod
    def backward(ctx, grad):
        return masked_scale(grad, ctx.mask, ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask (see the module docstring); same ``p``, same API."""

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor | SeededMask, float] | None:
        """The ``(mask, scale)`` this module applies to ``x`` now (``x * mask * scale``,
        rounded by :func:`masked_scale`), drawn from torch's default generator; None where it
        draws none (eval mode, ``p`` 0 or 1, a dtype without integer lanes)."""
        if not self.training or not 0.0 < self.p < 1.0 or x.dtype not in _LANES:
            return None
        return draw_mask(x.shape, self.p, x.dtype, x.device), 1.0 / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drawn = self.draw(x)
        if drawn is None:  # torch's own (identity in eval, zeros at p = 1)
            return super().forward(x)
        return _MaskedScale.apply(x, *drawn)


def install(model: nn.Module) -> Patch:
    """Swap every ``nn.Dropout`` with ``p > 0`` inside ``model`` for :class:`FastDropout`.

    Dropout has no weights, so state dicts, saved adapters and merging are unchanged. The
    patch's ``undo`` puts the original modules back, in the training mode the model has then.
    """
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout and child.p > 0:
                swaps.append((parent, name, child))
    if not swaps:
        return skipped("the model has no nn.Dropout with p > 0")
    for parent, name, child in swaps:
        fast = FastDropout(child.p, inplace=False)
        fast.train(child.training)
        setattr(parent, name, fast)  # also right for peft's ModuleDict of dropouts

    def undo() -> None:
        for parent, name, child in swaps:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)

    return Patch(len(swaps), undo)
