"""What the DPO bench's variants share: the settings, and what counts as a trained token.

A trained token is a completion token of a pair that the loss scores with gradients: the
chosen and the rejected completion of every pair in a step, each through its end-of-turn
token. TRL's tokenization of a conversational pair also keeps the chat template's newline
after that token (``<|im_end|>\\n``); it is not counted on either side, so the same pairs give
the same count whichever side tokenized them (:func:`pair_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class DpoSettings:
    """What every variant shares; the child processes receive it as JSON."""

    model: str = "embedded"
    steps: int = 20
    batch_size: int = 8  # pairs per optimizer step: 2x as many sequences through the forward
    lr: float = 5e-4  # examples/smollm2_dpo.yaml's
    warmup_ratio: float = 0.1
    seq_len: int = 256
    seed: int = 42
    beta: float = 0.1  # Rafailov et al. 2023; TRL's default
    threads: int = 0  # torch intra-op threads in every process; 0 keeps torch's default

    @property
    def n_pairs(self) -> int:
        """Pairs the bench trains on: one epoch of ``steps`` steps, every pair seen once."""
        return self.steps * self.batch_size


def completion_tokens(ids: Sequence[int], eos_id: int) -> int:
    """Tokens of one completion through its last end-of-turn token (all of them if none)."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] == eos_id:
            return i + 1
    return len(ids)


def pair_tokens(chosen: Sequence[int], rejected: Sequence[int], eos_id: int) -> int:
    """The trained tokens of one pair: its chosen plus its rejected completion tokens."""
    return completion_tokens(chosen, eos_id) + completion_tokens(rejected, eos_id)
