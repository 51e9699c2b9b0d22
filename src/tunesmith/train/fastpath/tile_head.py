"""The loss's last step in one call on AMX tiles: the frozen vocabulary head, its
cross-entropy and the gradient for the hidden states, without the logits leaving the cache.

Through torch (:mod:`~tunesmith.loss.head_ce` with the row blocks' products) the head writes an
``(N, V)`` bf16 logits tensor, tunesmith's softmax kernel rewrites it as ``softmax - onehot``
and the backward's product reads it again, each larger than L2, and oneDNN packs the whole
weight anew for each of the two products. Where the CPU has AMX tiles (:func:`on_tiles`),
``native/amx_head.cpp`` reads the weight in chunks of rows instead, keeps each row's online
softmax (running maximum and sum, as flash attention does) and adds the chunk's exps times its
weight rows to the row's gradient: one pass over the weight per block of rows, and only
``(N, C)`` saved for the backward. Each chunk is packed into the products' operand layout as
it is read, in cache (packed ahead, the layout's copy read from memory measured no faster).

Not bit for bit the torch path (its logits are rounded to bf16 before the softmax; here they
stay fp32), but closer to fp64: the losses within ~1e-6 where the torch path's are within
~1e-4 a token (``tests/train/fastpath/test_amx_head.py``).
"""

from __future__ import annotations

import torch

from tunesmith.train.fastpath import native, row_split


def on_tiles(h: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the head's loss runs on the tiles: a hidden size that is a multiple of 32 and
    :func:`~tunesmith.train.fastpath.row_split.tiles_take` (bf16 CPU tensors, AMX, no recorder
    of torch's products: the bench's shape-matched limit counts the head's products)."""
    return h.shape[-1] % 32 == 0 and row_split.tiles_take(h, weight)


def head_nll(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll, dh)`` where :func:`on_tiles`: each row's ``-log_softmax(h Wᵀ)[target]`` (fp32)
    and the gradient of their sum for ``h``, ``softmax(h Wᵀ) W - W[target]`` (bf16)."""
    return native.kernels().amx_head_nll(h.contiguous(), weight.contiguous(), targets.contiguous())
