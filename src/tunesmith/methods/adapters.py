"""Shared builder of the bottleneck-adapter methods (:mod:`.houlsby`, :mod:`.pfeiffer`,
:mod:`.parallel`): turn plain arguments into a ``BottleneckConfig`` and apply it with peft.

The three methods differ only in where the adapter sits and how it is composed (He et al.,
ICLR 2022, Table 1); the layer maths is in :mod:`tunesmith.methods.tuners.bottleneck.layer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.methods.base import MethodArgs
from tunesmith.methods.targets import position_modules
from tunesmith.methods.tuners.bottleneck import BottleneckConfig  # registers PeftType.BOTTLENECK
from tunesmith.shape import model_shape


def adapter_params(model_config: Any, bottleneck: int) -> int:
    """One adapter d -> m -> d with biases: 2·d·m + m + d."""
    d = model_shape(model_config).hidden
    return 2 * d * bottleneck + bottleneck + d


def apply_bottleneck(
    model, args: MethodArgs, *, roles: tuple[str, ...], insertion: str, scale: float, variant: str
):
    """Wrap the modules of ``roles`` (see :func:`position_modules`) with bottleneck adapters."""
    from peft import TaskType, get_peft_model

    targets = [name for role in roles for name in position_modules(role, model.config)]
    config = BottleneckConfig(
        task_type=TaskType.CAUSAL_LM,
        target_modules=targets,
        bottleneck_size=args.bottleneck,
        insertion=insertion,
        scale=scale,
        variant=variant,
    )
    return get_peft_model(model, config)


def bottleneck_builders(
    *, roles: tuple[str, ...], insertion: str, variant: str, scale: float | None
) -> dict[str, Callable[..., Any]]:
    """``apply``, ``count_trainable`` and ``count_tensors`` of a bottleneck method (spec fields).

    Args:
        roles: insertion points (:func:`position_modules` roles), one adapter each per block.
        insertion: ``"serial"`` or ``"parallel"``.
        variant: the method name recorded in ``adapter_config.json``.
        scale: fixed composition scale, or None to take ``MethodArgs.scale``.
    """

    def apply(model, args: MethodArgs):
        s = args.scale if scale is None else scale
        return apply_bottleneck(
            model, args, roles=roles, insertion=insertion, scale=s, variant=variant
        )

    def count(model_config: Any, args: MethodArgs) -> int:
        layers = model_shape(model_config).layers
        return len(roles) * layers * adapter_params(model_config, args.bottleneck)

    def tensors(model_config: Any, args: MethodArgs) -> int:
        # down and up projection, weight and bias each, per adapter
        return 4 * len(roles) * model_shape(model_config).layers

    return dict(apply=apply, count_trainable=count, count_tensors=tensors)


# Bottleneck adapters train at ~1e-3 (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022
# use 1e-4..1e-3).
ADAPTER_LR = 1e-3
