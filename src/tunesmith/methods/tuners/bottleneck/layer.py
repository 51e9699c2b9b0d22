"""The bottleneck-adapter layer: the maths, apart from where it is injected.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751),
§2.1 / Fig. 2: an adapter projects the d-dimensional hidden state down to m dimensions, applies a
non-linearity, projects back up, and adds a skip connection:

    f(h) = W_up · ReLU(W_down · h + b_down) + b_up          # (..., d) -> (..., m) -> (..., d)

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022
(arXiv:2110.04366), Eq. 9-10, name the two ways to compose it with a wrapped module g:

    serial:   h = g(x) + s · f(g(x))      (Houlsby: s = 1; the adapter reads g's output)
    parallel: h = g(x) + s · f(x)         (He et al.: s = 4; the adapter reads g's input)

W_up and b_up start at zero, so f = 0 and the adapted model equals the base at initialization.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps a module ``g`` (a linear layer or a whole FFN block) and adds ``s·f`` to its output.

    Args:
        base_layer: the wrapped module g; maps (..., d_in) to (..., d_out).
        adapter_name: name of the first adapter.
        d_in: feature size of g's input (read by a parallel adapter).
        d_out: feature size of g's output (read by a serial adapter, and f's output size).
        bottleneck_size: m.
        insertion: ``"serial"`` or ``"parallel"``.
        scale: s.
        init_weights: zero-initialize W_up, b_up.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_scale", "bottleneck_insertion")

    def __init__(self, base_layer: nn.Module, adapter_name: str, *, d_in: int, d_out: int, **kw):
        super().__init__()
        self.base_layer = base_layer
        self.d_in, self.d_out = d_in, d_out
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_scale: dict[str, float] = {}
        self.bottleneck_insertion: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kw)

    def update_layer(
        self,
        adapter_name: str,
        *,
        bottleneck_size: int,
        insertion: str,
        scale: float,
        init_weights: bool = True,
        inference_mode: bool = False,
    ) -> None:
        """Add (or replace) the adapter ``adapter_name`` on this layer."""
        d_read = self.d_in if insertion == "parallel" else self.d_out
        down = nn.Linear(d_read, bottleneck_size)
        up = nn.Linear(bottleneck_size, self.d_out)
        if init_weights:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        ref = next((p for p in self.base_layer.parameters() if p.is_floating_point()), None)
        if ref is not None:  # live where the wrapped weights live, in their dtype
            down, up = down.to(ref.device, ref.dtype), up.to(ref.device, ref.dtype)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_scale[adapter_name] = float(scale)
        self.bottleneck_insertion[adapter_name] = insertion
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def delta(self, adapter_name: str, h: torch.Tensor) -> torch.Tensor:
        """s · f(h) for one adapter; ``h``: (..., d_read) -> (..., d_out)."""
        down = self.bottleneck_down[adapter_name]
        up = self.bottleneck_up[adapter_name]
        z = torch.relu(down(h.to(down.weight.dtype)))  # (..., m)
        return self.bottleneck_scale[adapter_name] * up(z)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return out
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            # A serial adapter reads the (possibly already adapted) output; a parallel one the input.
            src = x if self.bottleneck_insertion[name] == "parallel" else out
            out = out + self.delta(name, src).to(out.dtype)
        return out

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        # ReLU between W_down and W_up makes f non-linear: there is no weight to fold it into.
        raise ValueError("bottleneck adapters are non-linear and cannot be merged into the base")

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
