"""Configuration of the Mix-and-Match adapter PEFT type (``PeftType.MAM``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.methods.tuners.bottleneck.config import BottleneckConfig


@dataclass
class MamConfig(BottleneckConfig):
    """A parallel FFN adapter (the inherited fields) plus ``num_virtual_tokens`` prefix vectors.

    Defaults follow He et al. 2022 §4.4 except the bottleneck width, which the caller sets
    (they use 512 on 12-layer encoders; tunesmith picks by model size).

    Args:
        num_virtual_tokens: prefix length l (learned keys and values per layer).
        prefix_init: ``"tokens"``: the keys/values the base model computes for l real tokens
            (Li & Liang 2021, §7.2), ``"normal"``: N(0, prefix_init_std²).
        prefix_token_ids: the l token ids of ``"tokens"`` init (drawn and recorded when None).
        prefix_init_std: standard deviation of ``"normal"`` init.
    """

    target_modules: list[str] | str | None = field(
        default_factory=lambda: ["mlp"], metadata={"help": "FFN blocks to adapt in parallel"}
    )
    insertion: str = field(default="parallel", metadata={"help": "MAM's FFN adapter is parallel"})
    scale: float = field(default=4.0, metadata={"help": "composition scale s of the FFN adapter"})
    num_virtual_tokens: int = field(default=30, metadata={"help": "prefix length l"})
    prefix_init: str = field(default="tokens", metadata={"help": "tokens | normal"})
    prefix_token_ids: list[int] | None = field(default=None, metadata={"help": "init token ids"})
    prefix_init_std: float = field(default=0.02, metadata={"help": "std of normal init"})

    def _set_peft_type(self) -> None:
        from peft.utils.peft_types import PeftType

        self.peft_type = PeftType.MAM

    def __post_init__(self):
        super().__post_init__()
        if self.prefix_init not in ("tokens", "normal"):
            raise ValueError(f"prefix_init must be 'tokens' or 'normal', got {self.prefix_init!r}")
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
