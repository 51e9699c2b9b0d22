"""Configuration of the bottleneck-adapter PEFT type (``PeftType.BOTTLENECK``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

INSERTIONS = ("serial", "parallel")


@dataclass
class BottleneckConfig(PeftConfig):
    """Where and how bottleneck adapters f(h) = W_up·ReLU(W_down·h) are added.

    Args:
        target_modules: modules to wrap (names or a regex). Serial adapters wrap a module and
            read its *output* (e.g. ``o_proj``, ``down_proj``); parallel adapters read its
            *input* (e.g. ``mlp``: the adapter sees what the FFN sees).
        exclude_modules: modules never to wrap.
        bottleneck_size: the bottleneck width m (d -> m -> d).
        insertion: ``"serial"`` (h <- h + s·f(h), Houlsby et al. 2019) or ``"parallel"``
            (h <- module(x) + s·f(x), He et al. 2022).
        scale: the composition scale s (1 for the serial adapters of the papers, 4 for He et
            al.'s parallel adapter).
        init_weights: zero-initialize W_up so the adapted model starts equal to the base.
        modules_to_save: extra modules to train and save in full.
        variant: which named method this placement is (houlsby, pfeiffer, parallel), so tools
            reading ``adapter_config.json`` can name it; informational only.
    """

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "modules to wrap with a bottleneck adapter"}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "modules never to wrap"}
    )
    bottleneck_size: int = field(default=64, metadata={"help": "bottleneck width m"})
    insertion: str = field(default="serial", metadata={"help": "serial | parallel"})
    scale: float = field(default=1.0, metadata={"help": "composition scale s"})
    init_weights: bool = field(default=True, metadata={"help": "zero-init W_up (output = base)"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "extra modules"})
    variant: str | None = field(default=None, metadata={"help": "houlsby | pfeiffer | parallel"})
    # peft's target matching reads this attribute; bottleneck adapters never target parameters.
    target_parameters: list[str] | None = field(default=None, metadata={"help": "unused"})

    def _set_peft_type(self) -> None:
        from peft.utils.peft_types import PeftType

        self.peft_type = PeftType.BOTTLENECK

    def __post_init__(self):
        super().__post_init__()
        self._set_peft_type()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if self.insertion not in INSERTIONS:
            raise ValueError(f"insertion must be one of {INSERTIONS}, got {self.insertion!r}")
        if self.bottleneck_size < 1:
            raise ValueError(f"bottleneck_size must be >= 1, got {self.bottleneck_size}")
