"""Pick the compute precision the hardware actually supports."""

from __future__ import annotations

import os
import re
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, instruction-set flags) of the first CPU in /proc/cpuinfo; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return "", frozenset()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return (
        model.group(1).strip() if model else "",
        frozenset(flags.group(1).split()) if flags else frozenset(),
    )


def onednn_isa_cap() -> str | None:
    """oneDNN's ISA cap when one is set (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` runs an AMX
    CPU's matmuls without AMX, as on an AVX512-BF16 CPU), else None."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX).

    Without them bf16 matmuls are emulated and slower than fp32, so ``auto`` keeps fp32.
    """
    flags = cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device) -> str:
    """Map ``auto`` to bf16 where native, else fp32 (fp16 only when asked: it needs loss scaling)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def torch_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
