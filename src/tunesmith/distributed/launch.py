"""``tunesmith train --nproc N``: the same command re-launched through torchrun.

The parent validates the config, writes it to a temporary YAML file and runs
``python -m torch.distributed.run --standalone --nproc-per-node N -m tunesmith train
CONFIG.yaml`` (or ``train --resume RUN_DIR``); it returns the failing rank's exit status
(2 for a user error, see :mod:`.exit_status`), or torchrun's when no rank recorded one;
torchrun stops the other ranks when one fails. Under torchrun or
``accelerate launch`` (``WORLD_SIZE`` set) nothing is re-launched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tunesmith.config import TrainConfig, to_yaml
from tunesmith.distributed import exit_status
from tunesmith.distributed.context import check_engine, world_size_from_env


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The torchrun command line running ``tunesmith train <train_args>`` on ``nproc`` ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), "-m", "tunesmith", "train", *train_args,
    ]  # fmt: skip


def relaunch(
    cfg: TrainConfig, resume: str | None = None, extra: tuple[str, ...] = ()
) -> int | None:
    """Run this training under torchrun when it asks for several processes.

    Returns:
        torchrun's exit status, or None when this process should train itself (one
        process asked for, or already launched by torchrun / accelerate).
    """
    if world_size_from_env() > 1 or cfg.nproc <= 1:
        return None
    check_engine(cfg.distributed, cfg.distributed_config)
    if cfg.distributed == "deepspeed":  # a contradicting config fails here, not in N ranks
        from tunesmith.distributed.deepspeed_config import config_for_run
        from tunesmith.precision import default_device

        config_for_run(cfg, cfg.nproc, default_device())
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as tmp:
        codes = Path(tmp) / "exit"
        codes.mkdir()
        env[exit_status.ENV] = str(codes)
        if resume:
            args = ["--resume", resume, *extra]
        else:
            path = Path(tmp) / "config.yaml"
            path.write_text(to_yaml(cfg), encoding="utf-8")
            args = [str(path), *extra]
        status = subprocess.call(torchrun_command(cfg.nproc, args), env=env)
        return exit_status.collect(codes, status)
