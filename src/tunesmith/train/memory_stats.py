"""The peak memory a training run reports: CUDA's allocator peak or Linux's resident peak."""

from __future__ import annotations

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's resident high-water mark.

    Without this a CPU run reported the peak of the whole process, so a second run in the same
    process (``tunesmith compare``) inherited the first one's peak, and base-model evaluation
    before training counted as training memory. Writing ``5`` to ``/proc/self/clear_refs``
    resets ``VmHWM`` (Linux >= 4.0); elsewhere the process peak stays.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated; CPU: peak resident memory since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
