"""The base model's evaluation, kept across runs: the same base on the same questions scores the same.

Every ``tunesmith train`` scores the untrained base first, so that the fine-tune has a baseline.
Greedy generation and perplexities of a fixed model on fixed data are deterministic, so a run
that would evaluate its base exactly as an earlier run did reads that run's result instead of
computing it again (on the demo ~35 s of a ~4-minute command; for a 7B model on a thousand
questions, far more). Iterating on a recipe (another rate, rank or number of steps) re-trains,
it does not re-score the base.

The key names everything the scores depend on and nothing they do not: the weight and config
files (name, size, modification time), the questions and answers with their metadata, every
config field except those that only shape training (``TRAINING_ONLY``: the method's own
hyper-parameters, the schedule, the output), the library versions and the device with its
thread count (a reduction's order can flip a greedy token). The method stays in the key: QLoRA
scores a 4-bit base and full fine-tuning an fp32 one. A field the list does not name is in the
key, so a new setting can only cost a miss, never a wrong reuse. Preference runs are not cached
(their base side adds reference-model metrics). ``TUNESMITH_BASE_EVAL_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.atomic import write_json
from tunesmith.switches import Switch

if TYPE_CHECKING:
    from tunesmith.config import TrainConfig
    from tunesmith.data.records import Conversation

ENV = "TUNESMITH_BASE_EVAL_CACHE"
KEEP = 200  # newest entries kept; each is one run's base generations (kilobytes)
TRAINING_ONLY = frozenset(
    {
        "output", "overwrite", "force", "resume", "lr", "lr_scheduler", "warmup_ratio",
        "weight_decay", "max_steps", "epochs", "batch_size", "grad_accum", "group_by_length",
        "save_steps", "logging_steps", "report_to", "recipe", "target", "rank", "alpha",
        "dropout", "num_virtual_tokens", "bottleneck", "freeze_top_k", "on_nan", "max_grad_norm",
        "skip_base_eval", "threads", "seed",
    }
)  # fmt: skip


enabled = Switch(ENV)  # on unless ENV is 0, off, false or no


def cache_dir() -> Path:
    from tunesmith.models.embedded import cache_root

    return cache_root() / "base-evals"


def key(cfg: TrainConfig, evals: list[Conversation], device: Any) -> str | None:
    """The cache key of this run's base evaluation; None when it cannot be pinned down (a
    model not on local disk, a preference objective, the cache turned off)."""
    if not enabled() or cfg.objective != "sft":
        return None
    files = _model_files(cfg.model)
    if files is None:
        return None
    import peft
    import torch
    import transformers

    import tunesmith

    settings = {k: v for k, v in cfg.model_dump().items() if k not in TRAINING_ONLY}
    parts = {
        "settings": settings,
        "model_files": files,
        "evals": [[[t.role, t.content] for t in c.turns] + [c.meta] for c in evals],
        "versions": [tunesmith.__version__, torch.__version__, transformers.__version__,
                     peft.__version__],
        "device": [str(device), _device_name(device), torch.get_num_threads()],
    }  # fmt: skip
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def load(cache_key: str | None) -> dict[str, Any] | None:
    """The stored ``eval_base.json`` object, or None (no entry, or one that does not parse)."""
    if cache_key is None:
        return None
    path = cache_dir() / f"{cache_key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data.get("metrics"), dict) or not isinstance(data.get("generations"), list):
        return None
    os.utime(path)  # most recently used: the last to be pruned
    return data


def store(cache_key: str | None, data: dict[str, Any]) -> None:
    """Keep ``data`` (what ``eval_base.json`` holds) under ``cache_key``; a cache that cannot be
    written never fails the run."""
    if cache_key is None:
        return
    try:
        write_json(cache_dir() / f"{cache_key}.json", data)
        _prune(cache_dir())
    except OSError:
        pass


def _model_files(model: str) -> list[list[Any]] | None:
    from tunesmith.models.identity import checkpoint_path

    try:
        where = checkpoint_path(model)
    except Exception:  # not resolvable without a download: no key, evaluate as usual
        return None
    if where is None or not where.is_dir():
        return None
    out = []
    for p in sorted(where.iterdir()):
        if p.is_file():
            st = p.stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def _device_name(device: Any) -> str:
    import platform

    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # the CPU model: one with AMX rounds bf16 products differently from one without
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _prune(root: Path) -> None:
    entries = sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[KEEP:]:
        stale.unlink(missing_ok=True)
