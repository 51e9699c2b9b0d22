"""The steps of a training run that only a distributed run (torchrun / accelerate) takes."""

from __future__ import annotations

import torch

from tunesmith.config import TrainConfig
from tunesmith.errors import UserInputError


def start_distributed(cfg: TrainConfig):
    """This process's :class:`~tunesmith.distributed.DistContext` (inactive for one process)."""
    from tunesmith.distributed import setup

    dist = setup(cfg.distributed, cfg.distributed_config)
    if dist.mode == "deepspeed":  # a config contradicting the run stops it before any work
        from tunesmith.distributed.deepspeed_config import config_for_run

        cfg = cfg.model_copy(update={"distributed_config": dist.distributed_config})
        dist.engine_config = config_for_run(cfg, dist.world_size, dist.device)
    return dist


def per_rank_plan(memory_plan, model_config, dist, force: bool):
    """The plan of one rank when the ranks shard the model state; refuse if it cannot fit."""
    from tunesmith.plan import shard_plan

    per_rank = shard_plan(memory_plan, model_config, dist.world_size, dist.plan_sharding)
    if per_rank.fits or force:
        return per_rank
    gib = 1024**3
    raise UserInputError(
        f"the memory plan says one of {dist.world_size} {dist.plan_sharding} processes needs "
        f"{per_rank.total_bytes / gib:.1f} GiB of {per_rank.budget_bytes / gib:.1f} GiB; use "
        "more processes, a smaller --batch-size or --seq-len, or pass --force to train anyway"
    )


def whole_model_on_main(model, loop, dist, cfg: TrainConfig, device: torch.device):
    """The trained model, whole, on rank 0 (None elsewhere); every rank must call this.

    DDP replicas are whole already. Sharded (FSDP) parameters are gathered, the shards
    freed, and rank 0 loads a fresh copy of the base with the method applied and the
    gathered trained weights in it. Under DeepSpeed (any ZeRO stage) the gathered weights
    are the fp32 masters, which the reloaded model takes in tunesmith's own dtype policy.
    """
    from tunesmith.train.checkpoint import trainable_state
    from tunesmith.train.steps import build_model

    if not dist.sharded:
        return model if dist.is_main else None
    if loop.engine is not None:
        from tunesmith.train.deepspeed_engine import full_trainable_state

        weights = full_trainable_state(model, keep=dist.is_main)  # a collective
        loop.engine.destroy()
    else:
        weights = trainable_state(model)  # a collective: full tensors on every rank
    loop.forward = loop.optimizer = loop.engine = None
    del model
    if not dist.is_main:
        return None
    import gc

    gc.collect()
    fresh = build_model(cfg, device).model
    unexpected = fresh.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise UserInputError(f"gathered weights do not fit the rebuilt model: {unexpected[0]}")
    return fresh
