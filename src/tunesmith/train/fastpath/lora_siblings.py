"""Sibling projections (a block's q, k and v) computed together in one wide GEMM.

An attention block calls ``q_proj(x)``, ``k_proj(x)`` and ``v_proj(x)`` on the same tensor, one
after the other. :func:`group_siblings` stacks the three frozen weights into one tensor and makes
each module's weight a view of its rows (no extra memory; peft's merge writes through the views).
The first sibling called computes every sibling's output in one
:class:`~tunesmith.train.fastpath.lora_linear.LoraLinears` node and leaves the others' columns
waiting; a sibling called with that same, unchanged tensor takes its columns instead of
computing. Anything else (another input, a weight no longer a view of the stack, a sibling
that is off) computes on its own, so no call order or model code is assumed.

Only LoRA branches without dropout are stacked (one input, so one input gradient); with
dropout each branch reads its own masked copy, and stacking measured slower on the seed
recipe (q and v with dropout beside a plain k; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.train.fastpath.lora_linear import LoraLinears

# Projections that read the same input, by module name. The MLP's gate and up are not here:
# one (tokens, 2 x 1536) GEMM and the strided halves it leaves measured no faster than two.
SIBLINGS = (("q_proj", "k_proj", "v_proj"),)
ATTR = "_tunesmith_siblings"


class SiblingGroup:
    """LoRA ``Linear`` modules whose frozen weights are rows of one stacked tensor."""

    def __init__(self, members: list[nn.Module], adapter: str, ready) -> None:
        self.members = members
        self.adapter = adapter
        self.ready = ready  # (module, x) -> whether it takes the fast path on this call
        bases = [m.base_layer for m in members]
        self.widths = tuple(b.out_features for b in bases)
        self.weight = torch.cat([b.weight.detach() for b in bases])
        has_bias = bases[0].bias is not None
        self.bias = torch.cat([b.bias.detach() for b in bases]) if has_bias else None
        o = 0
        for b, width in zip(bases, self.widths, strict=True):
            b.weight.data = self.weight[o : o + width]
            if has_bias:
                b.bias.data = self.bias[o : o + width]
            o += width
        self._views = [_where(m) for m in members]
        self._waiting: dict[int, torch.Tensor] = {}
        self._x: torch.Tensor | None = None  # the input the waiting outputs were computed from
        self._version = 0

    def intact(self) -> bool:
        """Whether every member's weight (and bias) is still its view of the stack."""
        return all(_where(m) == v for m, v in zip(self.members, self._views, strict=True))

    def take(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """``member``'s output for ``x``, computed with its siblings; None to compute alone."""
        i = self.members.index(member)
        if self._x is x and self._version == x._version and i in self._waiting:
            out = self._waiting.pop(i)
            if not self._waiting:  # all taken: hold no activation past this block
                self._x = None
            return out
        self._waiting, self._x = {}, None
        if (stack := self.stacked(x)) is None:
            return None
        weight, bias, scales, ab = stack
        out = LoraLinears.apply(x, weight, bias, scales, None, *ab)
        parts = out.split(self.widths, dim=-1)
        self._waiting = {j: p for j, p in enumerate(parts) if j != i}
        self._x, self._version = x, x._version
        return parts[i]

    def stacked(self, x: torch.Tensor) -> tuple | None:
        """``(weight, bias, scales, ab)`` of the members' one node for ``x`` (``ab`` each A,
        then each B), where every member takes the fast path now; else None."""
        name = self.adapter
        if x.dtype != self.weight.dtype or not all(self.ready(m, x) for m in self.members):
            return None
        if any(m.active_adapters != [name] for m in self.members) or not self.intact():
            return None  # an adapter added and switched to since the stack was built
        a = [m.lora_A[name].weight for m in self.members]
        b = [m.lora_B[name].weight for m in self.members]
        scales = tuple(float(m.scaling[name]) for m in self.members)
        return self.weight, self.bias, scales, (*a, *b)

    def release(self) -> None:
        """Give each member a weight (and bias) of its own again, and drop waiting outputs."""
        self._waiting, self._x = {}, None
        for m in self.members:
            b = m.base_layer
            b.weight.data = b.weight.data.clone()
            if b.bias is not None:
                b.bias.data = b.bias.data.clone()


def _where(m: nn.Module) -> tuple:
    """Where a member's base weight and bias live: their addresses and the weight's shape."""
    b = m.base_layer
    bias = None if b.bias is None else b.bias.data_ptr()
    return b.weight.data_ptr(), tuple(b.weight.shape), bias


def group_siblings(model: nn.Module, fast, ready) -> list[SiblingGroup]:
    """Stack the frozen weights of every sibling set whose members are all ``fast(module)``
    LoRA modules with no dropout; ``ready(module, x)`` says per call whether one takes the
    fast path.

    Members must also agree on adapter, input width, dtype, device and having a bias, and their
    base weights must be frozen (a trained base weight cannot be a view of a stack).
    """
    groups = []
    for parent in model.modules():
        for names in SIBLINGS:
            members = [getattr(parent, n, None) for n in names]
            if any(m is None or not fast(m) for m in members):
                continue
            adapters = {tuple(m.lora_A.keys()) for m in members}
            dropouts = [d for m in members for d in m.lora_dropout.values()]
            bases = [m.base_layer for m in members]
            params = [p for b in bases for p in b.parameters()]
            same = {(b.in_features, b.weight.dtype, b.weight.device, b.bias is None) for b in bases}
            if (
                len(adapters) != 1 or len(same) != 1 or any(p.requires_grad for p in params)
                or not all(isinstance(d, nn.Identity) for d in dropouts)
            ):  # fmt: skip
                continue
            group = SiblingGroup(members, adapters.pop()[0], ready)
            for m in members:
                m.__dict__[ATTR] = group
            groups.append(group)
    return groups


def ungroup(groups: list[SiblingGroup]) -> None:
    """Undo :func:`group_siblings`: each member's weight its own storage again."""
    for group in groups:
        group.release()
        for m in group.members:
            m.__dict__.pop(ATTR, None)
