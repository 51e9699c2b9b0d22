"""Who this process is in a distributed run, and the few collectives the trainer needs.

The process group is set up from the environment torchrun (or ``accelerate launch``) exports:
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; NCCL on GPUs,
gloo on CPUs. DDP and FSDP go through accelerate's ``Accelerator``; DeepSpeed through
``deepspeed.init_distributed``, since accelerate's DeepSpeed path leaves CPUs out (on CPU it
reported one process while torch.distributed had two). A single process gets an inactive
context whose collectives are no-ops, so the trainer has one code path for both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.errors import UserInputError

MODES = ("auto", "ddp", "fsdp", "deepspeed")


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun / accelerate launch set it (1 when not launched by them)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolve_mode(distributed: str, world_size: int) -> str:
    """``none`` for one process; ``auto`` means DDP on several, unless ``accelerate launch``
    was given a config with ``distributed_type: FSDP`` or ``DEEPSPEED``."""
    if world_size <= 1:
        return "none"
    if distributed != "auto":
        return distributed
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    return "ddp"


@dataclass
class DistContext:
    """This process's place in the run (``mode`` is none, ddp, fsdp or deepspeed)."""

    mode: str = "none"
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    accelerator: Any = None
    distributed_config: str | None = None
    # DeepSpeed: the config filled from the run's settings (deepspeed_config.fill_config).
    engine_config: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Parameters live in pieces across ranks (a full copy must be gathered to save)."""
        return self.mode in ("fsdp", "deepspeed")

    @property
    def device(self) -> torch.device:
        from tunesmith.precision import default_device

        if self.accelerator is not None:
            return self.accelerator.device
        if self.active and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return default_device()

    @property
    def plan_sharding(self) -> str:
        """How the memory planner should share the model state (plan/sharding.py)."""
        if self.mode == "deepspeed":
            return f"zero{self._zero_stage()}".replace("zero0", "ddp")
        return "fsdp" if self.mode == "fsdp" else "ddp"

    def _zero_stage(self) -> int:
        if self.engine_config is not None:  # already read and checked (deepspeed_config.py)
            return _stage_of(self.engine_config)
        return deepspeed_stage(self.distributed_config)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first; the others enter it once rank 0 has left it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sum each value over ranks (float64, one all-reduce for all of them)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        """The largest ``value`` over ranks."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.item()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (e.g. a signal that reached one rank)."""
        if not self.active:
            return flag
        return self.sum(float(flag))[0] > 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Tear the process groups down while the interpreter is whole (see cli.exit_process)."""
        if not (self.active and torch.distributed.is_initialized()):
            return
        import gc

        if self.mode == "deepspeed":
            import deepspeed.comm

            # Also drops DeepSpeed's own references to its groups (torch's call leaves them,
            # and with them the groups' gloo threads, alive until the interpreter's shutdown).
            deepspeed.comm.destroy_process_group()
        else:
            torch.distributed.destroy_process_group()
        gc.collect()  # the engine's reference cycles hold group handles too

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return self.device if backend == "nccl" else torch.device("cpu")


def deepspeed_stage(path: str | None) -> int:
    """The ZeRO stage of a DeepSpeed JSON config (``zero_optimization.stage``; 0 if unset)."""
    if not path:
        return 0
    import json
    from pathlib import Path

    try:
        return _stage_of(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError) as exc:
        raise UserInputError(f"--distributed-config {path}: not a DeepSpeed JSON: {exc}") from None


def _stage_of(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def check_engine(distributed: str, distributed_config: str | None) -> None:
    """Fail before anything starts when the engine asked for is missing or its file is."""
    if distributed == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise UserInputError(
                "--distributed deepspeed needs DeepSpeed: DS_BUILD_OPS=0 pip install "
                "--no-build-isolation deepspeed (the Makefile's set-up does this; or use "
                "--distributed fsdp, which needs nothing more)"
            ) from None
        if not distributed_config:
            raise UserInputError(
                "--distributed deepspeed needs --distributed-config DS.json (e.g. "
                "examples/distributed/deepspeed_zero3.json)"
            )
    if distributed_config and not os.path.isfile(distributed_config):
        raise UserInputError(f"--distributed-config {distributed_config}: file not found")


def setup(distributed: str = "auto", distributed_config: str | None = None) -> DistContext:
    """The context of this process; initializes the process group when launched on several.

    Raises:
        UserInputError: DeepSpeed asked for but not installed, or a config file missing.
    """
    world = world_size_from_env()
    mode = resolve_mode(distributed, world)
    if mode == "none":
        return DistContext()
    if mode == "deepspeed":
        # `accelerate launch --use_deepspeed --deepspeed_config_file F` passes F this way.
        distributed_config = distributed_config or os.environ.get(
            "ACCELERATE_DEEPSPEED_CONFIG_FILE"
        )
    check_engine(mode, distributed_config)
    from datetime import timedelta

    if mode == "deepspeed":
        return _setup_deepspeed(distributed_config, timedelta(hours=2))
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    kwargs: dict[str, Any] = {
        "mixed_precision": "no",  # tunesmith's own precision policy rules
        "cpu": not torch.cuda.is_available(),  # else accelerate sees one CPU process
        # Ranks wait at barriers while rank 0 cleans data or evaluates the base model.
        "kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(hours=2))],
    }
    if mode == "fsdp":
        # tunesmith shards with fully_shard itself (wrap.py); accelerate only sets up the
        # process group, so it must not build its own FSDP plugin from an accelerate config
        # (which also refuses to on CPUs).
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    acc = Accelerator(**kwargs)
    return DistContext(
        mode=mode,
        world_size=acc.num_processes,
        rank=acc.process_index,
        local_rank=acc.local_process_index,
        accelerator=acc,
        distributed_config=distributed_config,
    )


def _setup_deepspeed(distributed_config: str | None, timeout) -> DistContext:
    """The process group through DeepSpeed's own ``init_distributed`` (gloo on CPU)."""
    import deepspeed

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo", timeout=timeout, verbose=False
    )
    return DistContext(
        mode="deepspeed",
        world_size=torch.distributed.get_world_size(),
        rank=torch.distributed.get_rank(),
        local_rank=local_rank,
        distributed_config=distributed_config,
    )
