"""The running batch's key/value cache: left-padded rows that join, leave and share one forward.

Rows are aligned at the right (left padding), so every row's next token sits in the same
column and one ``(B, 1)`` forward decodes them all. A row's position ids count only its real
tokens, and the attention mask hides the padding, so each row's logits are those it would get
alone. Rows that join are prefilled on their own and padded into the running cache; rows that
finish are dropped, and columns that became padding in every row are cut off.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def cache_argument(model) -> str:
    """The forward's name for the KV cache: ``cache`` (transformers >= 5.x) or the older one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def returned_cache(out) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _layers(cache) -> list[tuple[torch.Tensor, ...]]:
    """Every layer's ``(keys, values[, sliding window])``, each ``(B, H, T, D)``."""
    return [tuple(t for t in layer if t is not None) for layer in cache]


def _rebuild(layers: list[tuple[torch.Tensor, ...]]):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


@dataclass
class KVBatch:
    """A left-padded batch: ``cache`` and ``mask`` (B, T) with 1 at real tokens.

    ``None`` cache means an empty batch.
    """

    cache: Any = None
    mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask and position ids for one new token per row: (B, T+1), (B, 1)."""
        assert self.mask is not None
        positions = self.mask.sum(dim=1, keepdim=True)  # real tokens so far = next position
        ones = torch.ones_like(self.mask[:, :1])
        return torch.cat([self.mask, ones], dim=1), positions

    def advanced(self, cache, mask: torch.Tensor) -> None:
        """After a decode forward: the cache and mask now hold the fed token."""
        self.cache, self.mask = cache, mask

    def join(self, other: KVBatch) -> None:
        """Append ``other``'s rows after this batch's, padding the shorter one on the left."""
        if self.mask is None:
            self.cache, self.mask = other.cache, other.mask
            return
        assert other.mask is not None
        t = max(self.mask.shape[1], other.mask.shape[1])
        mine, theirs = _layers(self.cache), _layers(other.cache)
        layers = [
            (
                torch.cat([_pad_left(a[0], t), _pad_left(b[0], t)]),
                torch.cat([_pad_left(a[1], t), _pad_left(b[1], t)]),
                *a[2:],
            )
            for a, b in zip(mine, theirs, strict=True)
        ]
        mask = torch.cat([_pad_mask(self.mask, t), _pad_mask(other.mask, t)])
        self.cache, self.mask = _rebuild(layers), mask

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order) and cut columns that are padding in all of them."""
        if not rows:
            self.cache, self.mask = None, None
            return
        assert self.mask is not None
        idx = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        start = int(mask.any(dim=0).to(torch.int8).argmax())  # first column any row uses
        layers = [
            (k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:], *rest)
            for k, v, *rest in _layers(self.cache)
        ]
        self.cache, self.mask = _rebuild(layers), mask[:, start:]


def _pad_left(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B, H, T0, D) -> (B, H, t, D) with zeros before (masked out, never attended)."""
    return F.pad(x, (0, 0, t - x.shape[2], 0)) if x.shape[2] < t else x


def _pad_mask(mask: torch.Tensor, t: int) -> torch.Tensor:
    return F.pad(mask, (t - mask.shape[1], 0)) if mask.shape[1] < t else mask


def left_padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Token rows -> ``input_ids``, ``attention_mask``, ``position_ids``, each (B, T)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, t - len(r) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)
