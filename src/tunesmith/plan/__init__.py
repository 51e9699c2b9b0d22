"""The memory planner: what a fine-tuning run will cost on a device, before anything loads.

Public calls: :func:`plan` (by model name), :func:`plan_for_run` (the trainer's entry, with a
loaded config), :func:`device_budget_bytes`, :func:`write_plan` (a run's ``plan.json``) and
:func:`traced_estimate` (one traced step on fake tensors).
"""

from tunesmith.plan.gpus import device_budget_bytes
from tunesmith.plan.planner import (
    Plan,
    plan,
    plan_config,
    plan_for_run,
    shard_plan,
    write_plan,
)


def traced_estimate(*args, **kwargs):
    """See :func:`tunesmith.plan.trace.traced_estimate` (imported lazily: it imports torch)."""
    from tunesmith.plan.trace import traced_estimate as _traced

    return _traced(*args, **kwargs)


__all__ = [
    "Plan", "device_budget_bytes", "plan", "plan_config", "plan_for_run", "traced_estimate",
    "shard_plan", "write_plan",
]  # fmt: skip

# `from tunesmith import plan` gives this package; calling it calls plan() (see _callable).
from tunesmith._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, plan)
