"""Device memory budgets: named GPUs, plain sizes (``24GB``, ``16GiB``) and ``cpu``.

Capacities are the vendors' datasheet figures. Marketing "GB" on GPU datasheets means GiB of
HBM/GDDR in practice (an "80GB" A100 reports 79.25 GiB usable to CUDA); the planner takes the
nominal size as GiB and subtracts the CUDA context separately (see ``analytic.CUDA_CONTEXT``).
"""

from __future__ import annotations

import math
import re

from tunesmith.errors import ConfigError

GIB = 1024**3

# name -> GiB of device memory (NVIDIA datasheets).
GPUS: dict[str, float] = {
    "t4": 16,
    "l4": 24,
    "a10g": 24,
    "rtx3090": 24,
    "rtx4090": 24,
    "rtx3060": 12,
    "rtx4080": 16,
    "v100": 16,
    "v100-32gb": 32,
    "a100-40gb": 40,
    "a100-80gb": 80,
    "a100": 80,
    "l40s": 48,
    "a6000": 48,
    "h100": 80,
    "h200": 141,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gb|gib|g)?\s*$", re.IGNORECASE)


def _normalize(name: str) -> str:
    name = "-".join(name.strip().lower().replace("_", "-").split())
    return name.removeprefix("nvidia-").removeprefix("geforce-").replace("rtx-", "rtx")


def is_cpu(device: str) -> bool:
    return _normalize(device) == "cpu"


def device_budget_bytes(device: str | int) -> int:
    """Bytes of memory a training process may plan to use on ``device``.

    Args:
        device: a GPU name (``rtx4090``, ``a100-80gb``, ``h100``...), a size (``24GB``,
            ``16GiB``, ``24``), ``cpu`` (the machine's total RAM via psutil), ``cuda`` /
            ``cuda:N`` (the total memory of that visible device), or an int of bytes.

    Raises:
        ConfigError: the name is neither a known GPU nor a size.
    """
    if isinstance(device, int):
        if device <= 0:
            raise ConfigError("gpu", device, "a positive number of bytes")
        return device
    name = _normalize(str(device))
    if name == "cpu":
        import psutil

        return int(psutil.virtual_memory().total)
    if name.startswith("cuda"):
        import torch

        index = int(name.split(":")[1]) if ":" in name else 0
        return int(torch.cuda.get_device_properties(index).total_memory)
    if name in GPUS:
        return int(GPUS[name] * GIB)
    match = _SIZE.match(name)
    if match:
        size = float(match.group(1))
        if not math.isfinite(size) or size <= 0:
            raise ConfigError("gpu", device, "a memory size above 0, like 24GB")
        return int(size * GIB)
    raise ConfigError("gpu", device, "a size like 24GB or one of: " + ", ".join([*GPUS, "cpu"]))
