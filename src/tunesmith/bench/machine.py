"""What a benchmark ran on: CPU model, the instruction sets that decide bf16 speed, threads, versions.

The machines here change between runs (AMD EPYC with AVX512-BF16 and no AMX, Intel Xeon with
AMX-BF16: a ~5x different bf16 matmul rate), so every benchmark table names its CPU.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from tunesmith import cpu_share
from tunesmith.precision import cpu_info, onednn_isa_cap

# The flags that change which kernels run: AVX-512 and its bf16 dot products, AMX tiles.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _onednn_version() -> str | None:
    found = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return found.group(1) if found else None


def describe() -> dict[str, Any]:
    """The machine as a dict for a benchmark's JSON."""
    model, flags = cpu_info()
    return {
        "cpu": model or "unknown CPU",
        "isa": [f for f in ISA_FLAGS if f in flags],
        "onednn_isa_cap": onednn_isa_cap(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait": cpu_share.described(),
        "torch": torch.__version__,
        "onednn": _onednn_version(),
    }


def one_line(machine: dict[str, Any]) -> str:
    """``Intel Xeon ... | avx512_bf16 amx_bf16 | 2 cores, 2 threads | torch 2.13.0, oneDNN 3.12.0``."""
    isa = (
        " ".join(f for f in machine["isa"] if f.startswith(("avx512_bf16", "amx"))) or "no bf16 ISA"
    )
    if machine.get("onednn_isa_cap"):
        isa += f" (oneDNN capped at {machine['onednn_isa_cap']})"
    kernels, paths = machine.get("cpu_kernels"), machine.get("kernel_paths")
    return (
        f"{machine['cpu']} | {isa} | {machine['cores']} cores, {machine['torch_threads']} threads,"
        f" {machine['omp_wait']} | torch {machine['torch']}, oneDNN {machine['onednn']}"
        + (f" | tunesmith's CPU kernels {kernels}" if kernels else "")
        + (f" | measured kernel paths: {paths}" if paths else "")
    )
