"""DeepSpeed ZeRO (stages 1-3) under tunesmith's own loop: the update, checkpoints, full weights.

``deepspeed.initialize`` wraps the :class:`~tunesmith.distributed.wrap.LossModule` together
with the loop's torch AdamW (config filled by :mod:`tunesmith.distributed.deepspeed_config`).
The loop keeps what it does for DDP and FSDP: the batch plan, a variable number of passes per
step (length-split micro-batches, aligned over ranks), the loss divided by the step's global
trained tokens and scaled by the world size (ZeRO averages gradients over ranks, as DDP does),
and the HF lr scheduler, which sets the learning rate on the torch optimizer ZeRO steps. Per
pass the loop sets ``engine.set_gradient_accumulation_boundary`` (true on the last one) and
calls ``engine.backward(loss, scale_wrt_gas=False)``: DeepSpeed's 1/accumulation rescale would
count a fixed number of passes. :func:`step` then runs ``engine.step()`` once per optimizer
step: ZeRO reduces the gradients, takes the global norm, clips to ``gradient_clipping`` and
updates, or drops the update when the norm is not finite (its overflow check, used for
``--on-nan skip``).

Checkpoints are DeepSpeed's own sharded format (``engine.save_checkpoint``: every rank writes
its partition of the fp32 master weights and AdamW state), in ``step-N/deepspeed/`` beside
tunesmith's position files; frozen base weights are left out. Every rank writes into the
same temp directory, so the run directory must be on storage all machines share.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from tunesmith.atomic import atomic_dir
from tunesmith.train import checkpoint as ckpt

STATE_DIR = "deepspeed"  # inside step-N: the engine's sharded state (and its zero_to_fp32.py)


def initialize(module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]):
    """The DeepSpeed engine around ``module`` (the loss) and ``optimizer`` (a torch AdamW)."""
    import logging

    import deepspeed

    # Its INFO lines (config dumps, timers) would drown tunesmith's; warnings still show.
    deepspeed.utils.logger.setLevel(logging.WARNING)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def step(engine) -> float:
    """Reduce, clip and update once; returns the global gradient norm before clipping.

    The norm is ``inf`` when DeepSpeed dropped the update for a non-finite gradient.
    """
    engine.step()
    norm = engine.get_global_grad_norm()
    if norm is None or not engine.was_step_applied():
        return math.inf
    return float(norm)


def save_checkpoint(
    root: Path, step: int, engine, scheduler, extra: dict[str, Any], ctx, keep: int = 2
) -> Path:
    """Write ``root/step-N`` atomically; every rank must call this.

    Rank 0 makes the temp directory and tells the others its name; each rank writes its
    shards there, then rank 0 adds the position files and the manifest and renames it.
    """
    from tunesmith.train.guard import check_free_disk

    target = root / f"step-{step}"
    rngs = ckpt.rng_states(ctx)
    if not ctx.is_main:
        _save_engine(engine, Path(ctx.broadcast(None)), ctx)
        ctx.barrier()  # rank 0 renames
        return target
    check_free_disk(root, _state_bytes(engine), "checkpoint")
    with atomic_dir(target) as tmp:
        ctx.broadcast(str(tmp))
        _save_engine(engine, tmp, ctx)
        ckpt.write_position(tmp, step, scheduler, rngs, extra)
    ckpt.prune(root, keep)
    ctx.barrier()
    return target


def _save_engine(engine, tmp: Path, ctx) -> None:
    engine.save_checkpoint(str(tmp / STATE_DIR), exclude_frozen_parameters=True)
    ctx.barrier()  # all shards are on disk before rank 0 hashes them


def _state_bytes(engine) -> int:
    """Disk a checkpoint needs: fp32 weight + 2 AdamW moments per trained parameter, + model copy."""
    n = sum(
        getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad
    )
    return 16 * n


def load_checkpoint(path: Path, engine, scheduler, rank: int) -> dict[str, Any]:
    """Restore a checkpoint of :func:`save_checkpoint` into a fresh engine; returns ``state.json``."""
    try:
        loaded, _ = engine.load_checkpoint(
            str(path / STATE_DIR), load_module_strict=False, load_lr_scheduler_states=False
        )
    except (*ckpt.UNREADABLE, OSError, AssertionError) as exc:
        raise ckpt.unreadable(path, exc) from exc
    if loaded is None:
        raise ckpt.unreadable(path, FileNotFoundError(f"no DeepSpeed state in {STATE_DIR}/"))
    return ckpt.restore_position(path, scheduler, rank)


def full_trainable_state(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The fp32 master weights of the trained parameters, whole, named as in ``model``.

    Each is gathered from the ZeRO partitions (``safe_get_full_fp32_param``, a collective:
    every rank calls this, in the same order); only where ``keep`` are they kept, on the CPU.
    The masters, not the module's weights, since under bf16 DeepSpeed computes with bf16
    copies.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            value = safe_get_full_fp32_param(p)
            if keep:
                out[name] = value.detach().cpu().contiguous()
    return out
