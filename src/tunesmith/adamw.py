"""Which AdamW kernel a training loop uses: fused on one CPU process, foreach elsewhere.

torch's foreach AdamW launches a dozen multi-tensor ops per step, each a pass over every
trainable tensor, and materializes ``sqrt(exp_avg_sq)`` for all of them at once. The fused
kernel (``fused=True``, CPU since torch 2.4) updates each tensor in one pass with no
temporaries: on the demo's 420 LoRA tensors a clipped step takes 5.5 ms instead of 13.7 ms
(2-core AMX Xeon, benchmarks/RESULTS.md), and the updated values agree to fp32 rounding.

Foreach stays on CUDA, where the planner's measured figures were taken with it, and under
torchrun, whose wrappers (FSDP's sharded parameters, DeepSpeed's engine) decide their own.
The planner reads :func:`fused_adamw` too, so it models the temporaries the loop will have.
"""

from __future__ import annotations


def fused_adamw(device_type: str, distributed: bool) -> bool:
    """Whether the loop's AdamW runs fused (one single-process CPU run) or foreach."""
    return device_type == "cpu" and not distributed


def adamw_kernel(device_type: str, distributed: bool) -> dict[str, bool]:
    """The ``torch.optim.AdamW`` keyword that picks the kernel (see :func:`fused_adamw`)."""
    if fused_adamw(device_type, distributed):
        return {"fused": True}
    return {"foreach": True}
