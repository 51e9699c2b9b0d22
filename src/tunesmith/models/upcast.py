"""Compute in fp32 while the weights stay resident in 16 bits.

Export checks compare a GGUF file with the adapted model at fp32 precision. Holding an fp32
copy of the whole model for that doubles the host memory a 16-bit checkpoint needs (a 7B model:
28 GB instead of 14 GB). Here each module's 16-bit parameters are cast to fp32 just before the
module runs and put back right after, so the arithmetic is exactly that of the fp32 model
(casting bf16/f16 to fp32 is exact) while only one module's fp32 copy exists at a time.

A peft tuner layer (LoRA, DoRA, IA3) is cast as a whole: DoRA reads its base weight directly
inside its own forward, not through the base layer's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_NARROW = (torch.bfloat16, torch.float16)


def _is_tuner_layer(module: nn.Module) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, BaseTunerLayer)


def _units(model: nn.Module) -> Iterator[tuple[nn.Module, bool]]:
    """``(module, whole_subtree)`` for every module that owns 16-bit parameters.

    Tuner layers are one unit with their whole subtree; other modules own only their direct
    parameters, so each weight is cast by exactly one unit.
    """
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if _is_tuner_layer(module):
            inside.update(id(m) for m in module.modules())
            yield module, True
        elif any(p.dtype in _NARROW for p in module.parameters(recurse=False)):
            yield module, False


@contextlib.contextmanager
def fp32_compute(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every forward of ``model`` computes in fp32 from its 16-bit weights.

    Inputs to the model are unchanged; since the embedding's output is fp32, so is every
    activation after it. Meant for inference (``torch.no_grad``/``inference_mode``).
    """
    handles = []
    for unit, subtree in _units(model):
        stash: dict[nn.Parameter, torch.Tensor] = {}

        def widen(_module, _args, unit=unit, subtree=subtree, stash=stash):
            for p in unit.parameters(recurse=subtree):
                if p.dtype in _NARROW:
                    stash[p] = p.data
                    p.data = p.data.float()

        def narrow(_module, _args, _out, stash=stash):
            for p, data in stash.items():
                p.data = data
            stash.clear()

        handles.append(unit.register_forward_pre_hook(widen))
        handles.append(unit.register_forward_hook(narrow, always_call=True))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
