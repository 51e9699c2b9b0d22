"""Resumable checkpoints: adapter (or trainable weights), optimizer, scheduler, RNG, position.

Each checkpoint is a directory written atomically (temp dir, then rename) with a manifest
of SHA-256 checksums; a checkpoint whose files do not match its manifest is skipped in
favour of the previous one. Before writing, the free disk is checked against the size of what
will be written, so a full disk fails with a message instead of a half-written save.

Distributed runs (``ctx`` given) write the same format: sharded tensors are gathered to full
ones (:mod:`tunesmith.distributed.state`) on every rank, rank 0 alone writes, and each
rank's RNG state is kept (``rng.pt`` for rank 0, ``rng-rank<N>.pt`` for the others).
DeepSpeed runs keep the engine's own sharded state instead of ``trainable.safetensors`` and
``optimizer.pt`` (:mod:`tunesmith.train.deepspeed_engine`); the position files
(:func:`write_position`) and the manifest are the same.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.atomic import atomic_dir
from tunesmith.distributed.state import (
    full,
    full_optimizer_state,
    shard_like,
    shard_optimizer_state,
)
from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {
        n: full(p.detach()).cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def save_checkpoint(
    root: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    extra: dict[str, Any],
    keep: int = 2,
    ctx=None,
) -> Path:
    """Write ``root/step-N`` atomically and keep only the newest ``keep`` checkpoints.

    With a distributed ``ctx`` every rank must call this (it gathers); rank 0 writes, and
    all ranks return once the checkpoint is complete.
    """
    from safetensors.torch import save_file

    from tunesmith.train.guard import check_free_disk, tensor_bytes

    target = root / f"step-{step}"
    weights = trainable_state(model)
    opt_state = full_optimizer_state(optimizer)
    rngs = rng_states(ctx)
    if ctx is not None and not ctx.is_main:
        ctx.barrier()  # rank 0 writes
        return target
    check_free_disk(
        root,
        tensor_bytes(weights) + tensor_bytes(opt_state["state"]),
        "checkpoint",
        resumable=bool(list_checkpoints(root)),
    )
    with atomic_dir(target) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(opt_state, tmp / "optimizer.pt")
        write_position(tmp, step, scheduler, rngs, extra)
    prune(root, keep)
    if ctx is not None:
        ctx.barrier()
    return target


def write_position(
    tmp: Path, step: int, scheduler, rngs: list[dict[str, Any]], extra: dict[str, Any]
) -> None:
    """The scheduler, every rank's RNG, ``state.json`` and, last, the manifest of all files.

    Written by rank 0 into the checkpoint's temp directory once the weights are in it.
    """
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, rng in enumerate(rngs):
        torch.save(rng, tmp / _rng_file(rank))
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    files = {
        p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints that verify; delete the others.

    Only verified checkpoints count: after a resume past a corrupt one, counting it would
    keep a checkpoint that cannot be loaded and delete the last one that can.
    """
    kept = 0
    for path in reversed(list_checkpoints(root)):
        if kept < keep and verify_checkpoint(path):
            kept += 1
        else:
            shutil.rmtree(path, ignore_errors=True)


def rng_states(ctx=None) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective under a distributed ``ctx``)."""
    return ctx.gather(_rng_state()) if ctx is not None else [_rng_state()]


def _rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, in types ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


checkpoint_step = RunDir.checkpoint_step


def verify_checkpoint(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return all(_sha256(path / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def latest_valid_checkpoint(root: Path) -> tuple[Path | None, list[Path]]:
    """The newest checkpoint that verifies, and the ones skipped because they did not."""
    skipped = []
    for path in reversed(list_checkpoints(root)):
        if verify_checkpoint(path):
            return path, skipped
        skipped.append(path)
    return None, skipped


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns ``state.json``.

    In a distributed run every rank calls this: it reads the full tensors and keeps its
    shards, and restores its own RNG state (``rank``).

    Nothing is unpickled beyond plain containers and tensors (``weights_only=True``), so a
    run directory from elsewhere cannot execute code on resume.

    Raises:
        UserInputError: the checkpoint does not fit this model and method (names or shapes of
            the trained tensors differ: the run's config.yaml was edited) or cannot be read.
    """
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    mismatch = sorted(set(params) ^ set(weights)) or [
        f"{n} {tuple(w.shape)} vs {tuple(params[n].shape)}"
        for n, w in weights.items()
        if w.shape != params[n].shape
    ]
    if mismatch:
        raise UserInputError(
            f"checkpoint {path} does not match the model and method of this run (e.g. "
            f"{mismatch[0]}); was the run's config.yaml changed after it was saved?"
        )
    # A state dict carries its param groups' kernel flags; this process keeps its own
    # (tunesmith/adamw.py: a checkpoint of a foreach run resumed on one CPU runs fused).
    kernels = [{k: g[k] for k in KERNEL_FLAGS if k in g} for g in optimizer.param_groups]
    try:
        opt_state = torch.load(path / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(shard_optimizer_state(opt_state, optimizer))
    except UNREADABLE as exc:
        raise unreadable(path, exc) from exc
    for group, own in zip(optimizer.param_groups, kernels, strict=True):
        group.update(own)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(shard_like(value.to(params[name].dtype), params[name]))
    return restore_position(path, scheduler, rank)


# torch.optim param-group keys that pick the update kernel, not the optimization.
KERNEL_FLAGS = ("fused", "foreach")

# What a damaged or mismatched checkpoint raises while being read back.
UNREADABLE = (pickle.UnpicklingError, RuntimeError, ValueError, KeyError)


def unreadable(path: Path, exc: BaseException) -> UserInputError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserInputError(f"checkpoint {path} cannot be restored: {first}")


def restore_position(path: Path, scheduler, rank: int = 0) -> dict[str, Any]:
    """Restore the scheduler and rank ``rank``'s RNG; returns ``state.json``."""
    try:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / _rng_file(rank), weights_only=True)
    except UNREADABLE as exc:
        raise unreadable(path, exc) from exc
    _set_rng_state(rng)
    return json.loads((path / "state.json").read_text())
