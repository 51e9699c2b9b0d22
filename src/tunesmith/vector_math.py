"""torch's vector math set up on one thread, before a parallel call can race its set-up.

PyTorch's x86 wheels compute float unary ops such as ``cos`` and ``sin`` with MKL's vector-math
functions, inside torch's OpenMP threads. When the first such call in a process is a parallel
one, the second thread's part can come out one rounding apart: on the 2-core AMX Xeon,
transformers' RoPE table (``emb.cos()``) of a training's first forward had ~1% of its second
half one bf16 step off in about a third of fresh processes, so runs with the same seed differed
from their first step (benchmarks/RESULTS.md, "Runs that differ in the last bit"). Any such op
on a tiny tensor first (one thread: ``sin`` fixed ``cos`` too, so the set-up is shared) made
every later call agree, in 14 of 14 processes.
"""

from __future__ import annotations

import functools


@functools.cache
def initialize() -> None:
    """Run torch's vector-math ``sin`` once on one thread (idempotent, microseconds)."""
    import torch

    torch.ones(4).sin()
