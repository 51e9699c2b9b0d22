"""The loss as a module, wrapped in DDP or FSDP.

The fast loss path (:func:`tunesmith.loss.loss_sum`) calls the model's body and head
directly, which would bypass a DDP/FSDP wrapper's ``forward`` (DDP would not know to reduce
gradients; FSDP would not gather parameters). So the wrapped module is :class:`LossModule`,
whose ``forward`` *is* the loss; the language model inside is untouched and keeps its names.

FSDP is torch's own ``fully_shard`` (FSDP2, FULL_SHARD: parameters, gradients and optimizer
state split over ranks; each decoder layer one unit, gathered just before it runs). It is
called directly rather than through accelerate, whose FSDP path is GPU-only and so could not
be tested here. DDP is torch's ``DistributedDataParallel`` (accelerate's ``prepare`` would
switch engines on its own when a launcher config says FSDP or DeepSpeed). DeepSpeed wraps the
same ``LossModule``, but only once the optimizer exists (:mod:`tunesmith.train.deepspeed_engine`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from tunesmith.data.dataset import Batch
from tunesmith.distributed.context import DistContext
from tunesmith.errors import UserInputError
from tunesmith.loss import loss_sum


class LossModule(nn.Module):
    """``forward(...)`` = summed token loss of ``lm`` on a batch (see ``loss_sum``)."""

    def __init__(self, lm: nn.Module, fast: bool = True):
        super().__init__()
        self.lm = lm
        self.fast = fast

    def forward(self, input_ids, labels, attention_mask, position_ids=None) -> torch.Tensor:
        batch = Batch(input_ids, attention_mask, labels, position_ids)
        return loss_sum(self.lm, batch, fast=self.fast)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (``_no_split_modules`` of the transformers model), outermost first."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap(model: nn.Module, ctx: DistContext, fast: bool = True) -> nn.Module:
    """``LossModule(model)`` ready for ``ctx.mode``; call before making the optimizer.

    FSDP replaces the parameters of ``model`` in place by their shards (DTensors), keeping
    their names, so ``model.named_parameters()`` still lists what the optimizer trains.
    DeepSpeed gets the bare ``LossModule``: ``deepspeed.initialize`` needs the optimizer.
    """
    module = LossModule(model, fast)
    sharding = ctx.mode in ("fsdp", "deepspeed")
    if sharding and any(type(p).__name__ == "Params4bit" for p in model.parameters()):
        raise UserInputError(
            f"--distributed {ctx.mode} cannot shard 4-bit (QLoRA) weights; use --distributed "
            "ddp, or --method lora on a 16-bit base"
        )
    if ctx.mode == "deepspeed":
        return module
    if ctx.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(module)
        return module
    if ctx.mode == "ddp":
        device = ctx.device
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    raise ValueError(f"no wrapper for distributed mode {ctx.mode!r}")


@contextlib.contextmanager
def gradient_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient reduction for a non-final micro-batch of an accumulated step."""
    if hasattr(module, "set_gradient_accumulation_boundary"):
        # A DeepSpeed engine: the boundary decides when ZeRO reduces and when step() updates.
        module.set_gradient_accumulation_boundary(sync)
        yield
        return
    if sync:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield


def local_value(x: torch.Tensor) -> float:
    """A scalar that may be a DTensor (e.g. FSDP's gradient norm) as a float."""
    from torch.distributed.tensor import DTensor

    return float(x.full_tensor() if isinstance(x, DTensor) else x)
