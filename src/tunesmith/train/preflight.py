"""The checks a run makes before it writes or loads anything, new or resumed."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import TrainConfig
from tunesmith.errors import ConfigError, UserInputError
from tunesmith.precision import resolve_precision
from tunesmith.rundir import RunDir, RunLock, RunLocked
from tunesmith.train.dist_steps import per_rank_plan


@dataclass
class Preflight:
    """What the checks before loading decided: the config that runs, where the model comes
    from, the memory plan (kept in memory; ``plan.json`` is its record) and where to resume."""

    cfg: TrainConfig
    source: Any  # models.loading.ModelSource
    plan: Any | None  # plan.Plan; None when resuming (the run's plan.json decided)
    checkpointing: bool
    resume_from: Path | None = None


def check_objective(cfg: TrainConfig, method) -> None:
    """Refuse an objective the method cannot train, with the spec's reason.

    Raises:
        ConfigError: a parameter of another objective (``--sft-weight`` with ORPO, ``--beta``
            with SFT).
        UserInputError: a preference objective with a method whose spec refuses it, or
            a setting the preference step does not support (packing, several processes,
            KTO with micro-batch 1).
    """
    from tunesmith.objectives import OBJECTIVES

    takes = OBJECTIVES[cfg.objective].defaults
    for name in sorted({k for spec in OBJECTIVES.values() for k in spec.defaults}):
        if getattr(cfg, name) is not None and name not in takes:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in takes) or "no preference parameters"
            raise ConfigError(
                name.replace("_", "-"), getattr(cfg, name),
                f"no value: --objective {cfg.objective} takes {flags}",
            )  # fmt: skip
    if cfg.objective != "sft" and method.preference_refusal:
        raise UserInputError(
            f"--objective {cfg.objective} does not work with --method {cfg.method}: "
            f"{method.preference_refusal}"
        )
    if cfg.objective != "sft":
        for bad, why in (
            (cfg.packing, "--packing (a pair's two sides must stay whole rows)"),
            (cfg.nproc > 1, "--nproc > 1 (the preference step runs in one process)"),
            (
                cfg.objective == "kto" and cfg.batch_size < 2,
                "--batch-size 1 (KTO's KL term pairs each prompt with another example's completion)",
            ),
        ):
            if bad:
                raise UserInputError(f"--objective {cfg.objective} does not work with {why}")


# -- preflight ------------------------------------------------------------------------------
def preflight(cfg: TrainConfig, dist) -> Preflight:
    """Validate what can be checked cheaply, and plan memory, before anything is written."""
    from tunesmith.methods import get_method
    from tunesmith.models.loading import resolve_model
    from tunesmith.train import guard
    from tunesmith.train.data_plan import stream_plan

    if cfg.nproc > 1 and not dist.active:
        raise UserInputError(
            f"nproc {cfg.nproc} needs a launcher: run `tunesmith train --nproc {cfg.nproc}` "
            "or torchrun / accelerate launch (see docs/distributed.md)"
        )
    cfg = cfg.model_copy(update={"nproc": dist.world_size})  # config.yaml: what ran
    if dist.mode == "deepspeed":  # --resume must find the same engine and its config
        cfg = cfg.model_copy(
            update={
                "distributed": "deepspeed",
                "distributed_config": os.path.abspath(dist.distributed_config),
            }
        )
    guard.check_paths(cfg)
    # config.yaml records whether the data streams (auto decides by size): --resume must read
    # back the same examples even if the data has changed or gone since.
    cfg = cfg.model_copy(update={"streaming": stream_plan(cfg).streaming})
    source = resolve_model(cfg.model)
    check_objective(cfg, get_method(cfg.method))
    if cfg.init_from:
        from tunesmith.train.init_from import check_init_from

        check_init_from(cfg.init_from, get_method(cfg.method), cfg.model)
    model_config = guard.model_config_for(source.path, cfg.trust_remote_code)
    guard.check_against_model(cfg, model_config)
    # Sharded: the per-rank plan decides (below), not the single-process one.
    plan = guard.memory_plan(
        cfg.model_copy(update={"force": True}) if dist.sharded else cfg,
        model_config,
        dist.device,
        resolve_precision(cfg.precision, dist.device),
    )
    if dist.sharded:
        plan = per_rank_plan(plan, model_config, dist, cfg.force)
    checkpointing = bool(plan.settings and plan.settings.gradient_checkpointing)
    return Preflight(cfg, source, plan, checkpointing)


def preflight_resume(run: RunDir, dist, say: Callable[[str], None]) -> Preflight:
    """The run's own config and plan, and its newest checkpoint that verifies.

    A run stopped before its first checkpoint (Ctrl-C or ``kill -9`` during the base
    evaluation, say) starts again at step 0 with its saved config and data.
    """
    import json

    from tunesmith.models.loading import resolve_model
    from tunesmith.train import checkpoint as ckpt

    holder = RunLock.holder(run.path)
    if holder is not None:
        raise RunLocked(run.path, holder or None)
    cfg = run.config
    if cfg.nproc != dist.world_size:
        raise UserInputError(
            f"{run.path} was trained on {cfg.nproc} process(es) and the batch plan depends on "
            f"it; resume with --nproc {cfg.nproc} (this launch has {dist.world_size})"
        )
    resume_from, skipped = ckpt.latest_valid_checkpoint(run.checkpoints)
    for bad in skipped:
        say(f"checkpoint {bad.name} is corrupt or partial; skipping it")
    if resume_from is None and skipped:
        raise UserInputError(f"{run.path} has no valid checkpoint to resume from")
    if resume_from is None and run.is_finished():
        raise UserInputError(f"{run.path} has finished training; there is nothing to resume")
    if resume_from is None:
        say(f"{run.path} stopped before its first checkpoint; training again from step 0")
    try:
        inputs = json.loads(run.plan_path.read_text()).get("inputs") or {}
    except (OSError, ValueError):
        inputs = {}
    checkpointing = bool(inputs.get("gradient_checkpointing"))
    return Preflight(cfg, resolve_model(cfg.model), None, checkpointing, resume_from)
