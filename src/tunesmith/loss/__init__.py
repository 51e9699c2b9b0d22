"""The causal-LM loss over a batch, shared by training, evaluation and the distributed wrappers.

:func:`loss_sum` (``causal_lm``) sums the token cross-entropies over trained positions, with a
fast path that computes logits only where a token is trained; on CPU with bf16 logits its
cross-entropy is :func:`chunked_cross_entropy` (``chunked_ce``), and in training a frozen
head and that cross-entropy are one node whose gradient is formed in the forward
(``head_ce``). It sits below ``train``, ``eval`` and ``distributed`` so that each of them can
use it without importing the others.
"""

from tunesmith.loss.causal_lm import fast_path_eligible, loss_sum
from tunesmith.loss.chunked_ce import chunked_cross_entropy

__all__ = ["chunked_cross_entropy", "fast_path_eligible", "loss_sum"]
