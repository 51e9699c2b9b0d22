"""Injection of bottleneck adapters into a model (``PeftType.BOTTLENECK``).

Design: every adapter *wraps* a module and adds to its output, so one layer class expresses all
three placements of the unified view by choosing the wrapped module and what the adapter reads:

- Houlsby (serial, after attention and after FFN): wrap ``o_proj`` and ``down_proj``; the adapter
  reads the wrapped module's output h and returns h + f(h), *before* the block's residual add,
  exactly where Houlsby et al. put it (Fig. 2).
- Pfeiffer (serial, after FFN only): wrap ``down_proj`` alone.
- Parallel (He et al. 2022): wrap the whole FFN block (``mlp``); the adapter reads the FFN's input
  x (the post-attention-norm hidden state) and returns FFN(x) + s·f(x).

Wrapping instead of hooking keeps the method visible in ``print(model)``, lets peft's generic
machinery (trainable marking, state-dict filtering, ``unload``, adapter switching) work unchanged,
and needs no per-architecture code beyond the target names.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from tunesmith.methods.tuners.bottleneck.config import BottleneckConfig
from tunesmith.methods.tuners.bottleneck.layer import BottleneckLayer


def _features(module: nn.Module, hidden_size: int) -> tuple[int, int]:
    """(d_in, d_out) of a wrapped module: a linear layer's own, else the model width (FFN block)."""
    if isinstance(module, BottleneckLayer):
        return module.d_in, module.d_out
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return hidden_size, hidden_size


class BottleneckModel(BaseTuner):
    """peft tuner that wraps the configured modules in :class:`BottleneckLayer`."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict[str, list[str]] = {}  # placement is always explicit

    def _hidden_size(self) -> int:
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text.hidden_size)

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **_: Any,
    ) -> None:
        d_in, d_out = _features(target, self._hidden_size())
        kw = dict(
            bottleneck_size=peft_config.bottleneck_size,
            insertion=peft_config.insertion,
            scale=peft_config.scale,
            init_weights=peft_config.init_weights,
            inference_mode=peft_config.inference_mode,
        )
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, **kw)
            return
        new_module = BottleneckLayer(target, adapter_name, d_in=d_in, d_out=d_out, **kw)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        if isinstance(new_module, BottleneckLayer):
            super()._replace_module(parent, child_name, new_module, child)
            return
        # Unloading puts the original module back as it was. peft's generic path would copy a
        # `.weight` onto it, which a wrapped FFN block (parallel adapters) does not have.
        setattr(parent, child_name, new_module)
