"""The merged model's tensors, computed one at a time from the adapted model.

``merge_and_unload`` on an fp32 copy of the model needs 4 bytes per parameter at once. An
export only ever needs one merged tensor at a time (the GGUF writer encodes and writes each
on its own), so here the adapted model stays as it was loaded (16-bit or 4-bit base, adapter
unmerged) and each adapted layer is folded in fp32 when its weight is asked for:

* a tuner layer on a plain ``nn.Linear`` (LoRA, rsLoRA, DoRA, IA3, ...): a copy of that one
  layer in fp32 is merged by peft itself (``merge(safe_merge=True)``), so every method's own
  merge rule applies and the result is bit-identical to ``merge_and_unload`` in fp32;
* a LoRA layer on a 4-bit NF4 base (QLoRA): the base weight is dequantized straight to fp32
  and peft's delta (``get_delta_weight``) added, as :func:`tunesmith.methods.qlora.dequantize`
  then ``merge_and_unload`` would; DoRA on a 4-bit base, and a 4-bit model that has already run
  a forward on CPU (bitsandbytes then holds its weights repacked), are refused here (the
  caller loads afresh, or falls back to the whole-model merge);
* every other tensor is the stored one, widened to fp32.

Peak host memory is the adapted model as loaded plus one layer in fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tunesmith.errors import WorkFailed


class NotStreamable(Exception):
    """A layer this module cannot fold on its own; merge the whole model instead."""


def _tuner_layers(base: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in base.named_modules() if isinstance(m, BaseTunerLayer)}


def _is_4bit(module: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - a 4-bit model cannot exist without it
        return False
    return isinstance(module, bnb.nn.Linear4bit)


def _base_of(layer: nn.Module) -> nn.Module:
    return layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer


def _merged_weight(layer: nn.Module) -> torch.Tensor:
    """The weight of ``layer`` with its active adapter folded in, fp32 (the bias is unchanged).

    ``layer`` is a tuner layer, or a 4-bit linear no adapter touches (dequantized only).
    """
    base = _base_of(layer)
    if layer is base:  # a 4-bit linear outside the adapter's targets
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
    if _is_4bit(base):
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
        for name in layer.active_adapters:
            weight = weight + layer.get_delta_weight(name).float()
        return weight
    one = copy.deepcopy(layer).float()
    try:
        one.merge(safe_merge=True)
    except ValueError as exc:  # peft's NaN guard
        raise WorkFailed(f"merge failed: {exc}") from exc
    return one.get_base_layer().weight.data


class MergedTensors:
    """The state dict ``merge_and_unload`` would give, produced lazily, tensor by tensor.

    Args:
        model: a ``peft.PeftModel`` with its adapter unmerged (or a plain model: then the tensors
            are its own, widened to fp32).

    Raises:
        NotStreamable: a layer that cannot be folded alone (checked up front).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = base.config
        self.generation_config = getattr(base, "generation_config", None)
        self._layers = _tuner_layers(base)
        for module in base.modules():
            if _is_4bit(module) and getattr(module.weight.quant_state, "packing_format_for_cpu", 0):
                # bitsandbytes repacks a 4-bit weight for its CPU kernel on the first forward,
                # and ``dequantize_4bit`` reads only the layout it was loaded in.
                raise NotStreamable("a 4-bit weight already repacked by a CPU forward")
        for layer in self._layers.values():
            if _is_4bit(_base_of(layer)) and (
                any(getattr(layer, "use_dora", {}).values())
                or not hasattr(layer, "get_delta_weight")
            ):
                raise NotStreamable(f"{type(layer).__name__} (DoRA or not LoRA) on a 4-bit base")
            if any(getattr(layer, "lora_bias", {}).values()):
                raise NotStreamable("a LoRA bias (lora_bias): its merge changes the base bias")
        self._plain: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        inside = {id(m) for layer in self._layers.values() for m in layer.modules()}
        for mod_name, module in base.named_modules():
            if id(module) not in inside and _is_4bit(module):
                self._layers[mod_name] = module  # not adapted, but stored packed: dequantize
            if mod_name in self._layers:
                b = _base_of(module)
                self._shapes[f"{mod_name}.weight"] = (
                    (b.out_features, b.in_features) if _is_4bit(b) else tuple(b.weight.shape)
                )
                if getattr(b, "bias", None) is not None:  # the merge leaves it (lora_bias refused)
                    self._plain[f"{mod_name}.bias"] = b.bias
                    self._shapes[f"{mod_name}.bias"] = tuple(b.bias.shape)
                continue
            if id(module) in inside:
                continue
            for p_name, p in module._parameters.items():
                if p is not None:
                    name = f"{mod_name}.{p_name}" if mod_name else p_name
                    self._plain[name] = p
                    self._shapes[name] = tuple(p.shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, in module order."""
        return dict(self._shapes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def tensor(self, name: str) -> torch.Tensor:
        """The merged fp32 tensor ``name``; NaN/inf raise ``WorkFailed``."""
        if name in self._plain:
            t = self._plain[name].detach().float()
        else:
            t = _merged_weight(self._layers[name.removesuffix(".weight")])
        if not torch.isfinite(t).all():
            raise WorkFailed(f"merged weights contain NaN/inf in {name}")
        return t


def merged_tensors(model: Any) -> MergedTensors:
    """:class:`MergedTensors` of ``model`` (see there)."""
    return MergedTensors(model)
