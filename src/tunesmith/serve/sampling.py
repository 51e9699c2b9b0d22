"""Per-request sampling: greedy at temperature 0, else temperature and nucleus (top-p) sampling.

Each request draws from its own ``torch.Generator`` seeded with its ``seed`` (a random one when
none is given), so a seeded request gives the same answer whichever requests share its batch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


@dataclass
class Sampling:
    """How one request picks its tokens.

    Attributes:
        max_tokens: tokens to generate at most (the end-of-turn token counts as one).
        temperature: 0 is greedy; higher flattens the distribution.
        top_p: keep the smallest set of tokens whose probability reaches ``top_p``.
        seed: seeds the request's generator; ``None`` draws a random seed.
        stop: strings that end the answer (not included in it).
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(int(seed) % 2**63)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from one row's logits, shape (V,)."""
        if self.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Drop a token when the tokens before it already reach top_p (the first always stays).
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            pick = torch.multinomial(sorted_p.cpu(), 1, generator=self.generator)
            return int(order[int(pick)])
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
