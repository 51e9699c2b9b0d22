"""Training on several processes: DDP and FSDP through torchrun/accelerate, DeepSpeed passed through.

Blocks, each small: :mod:`.context` (who am I, process-group setup, the few collectives the
loop needs), :mod:`.batches` (a rank's share of a planned micro-batch), :mod:`.wrap` (the
loss as an ``nn.Module`` wrapped in DDP or FSDP), :mod:`.state` (full tensors out of and
back into sharded parameters and optimizer state, for checkpoints), :mod:`.deepspeed_config`
(the DeepSpeed config a run implies), :mod:`.launch` (``tunesmith train --nproc N``
re-launched through torchrun) and :mod:`.exit_status` (its exit status is the failing rank's).
The DeepSpeed engine under the loop, which writes the loop's checkpoints, is
:mod:`tunesmith.train.deepspeed_engine`. This package sits below ``train``: nothing here
imports it. See docs/distributed.md.
"""

from tunesmith.distributed.batches import rank_slice
from tunesmith.distributed.context import DistContext, setup, world_size_from_env

__all__ = ["DistContext", "rank_slice", "setup", "world_size_from_env"]
