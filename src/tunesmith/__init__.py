"""tunesmith: plan, clean, train, evaluate, merge and export parameter-efficient fine-tunes.

The library mirrors the CLI::

    from tunesmith import plan, clean, train, evaluate, merge, export, compare

    p = plan("Qwen/Qwen2.5-7B-Instruct", method="qlora", gpu="24GB", batch_size=4, seq_len=2048)
    r = train(method="lora", max_steps=150)          # the embedded demo by default
    evaluate(r.run_dir)
    merge(r.run_dir, "merged/")

Names are imported lazily so ``import tunesmith`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from tunesmith import cpu_share as _cpu_share

__version__ = "0.1.0"

# Before anything loads torch: how its OpenMP threads wait when another process shares the
# cores (a 20x slowdown otherwise; see tunesmith.cpu_share). The CLI looks at the CPUs first.
_cpu_share.configure(sample=False)

# name -> "module[:attribute]". plan, train and export are subpackages that are callable as
# their function (see tunesmith._callable), so either import order gives a working callable.
_API = {
    "plan": "tunesmith.plan",
    "clean": "tunesmith.data.clean:clean",
    "train": "tunesmith.train",
    "evaluate": "tunesmith.eval.api:evaluate",
    "merge": "tunesmith.export:merge",
    "export": "tunesmith.export",
    "compare": "tunesmith.compare",
    "serve": "tunesmith.serve",
    "TrainConfig": "tunesmith.config:TrainConfig",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod
