"""Guards around a training run: checks before anything loads, the memory plan, OOM and disk.

The up-front checks run on the model's *config* (or a meta-device model built from it), so a
bad value costs a fraction of a second instead of minutes of loading. Each refusal is one message
naming the key, the value and what is allowed (:class:`~tunesmith.errors.ConfigError`).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import torch

from tunesmith import disk
from tunesmith.config import TrainConfig
from tunesmith.disk import free_disk_bytes, nearest_existing  # noqa: F401  (re-exported)
from tunesmith.errors import ConfigError, UserInputError

# Share of a CUDA device this process may allocate: an OOM then raises inside the step (where
# the loop can retry with a smaller micro-batch) instead of starving the driver or neighbours.
CUDA_MEMORY_FRACTION = 0.95
GIB = 1024**3


# -- paths ----------------------------------------------------------------------------------
def check_paths(cfg: TrainConfig) -> None:
    """Data files and dataset folders exist (a hub id is checked when it loads); the run
    directory can be created where asked."""
    from tunesmith.data.sources import resolve_source
    from tunesmith.errors import DataError

    for key, files in (("data", cfg.data), ("eval-data", [cfg.eval_data] if cfg.eval_data else [])):
        for f in files:
            try:
                resolve_source(f)
            except DataError:
                if Path(f).is_dir():
                    raise ConfigError(
                        key, f, "a data file or a datasets folder; this directory holds neither"
                    ) from None
                raise UserInputError(f"data file not found: {f}") from None
    if cfg.output is None:
        return
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise ConfigError("output", cfg.output, "a run directory; this path is an existing file")
    ancestor = nearest_existing(out)
    if not ancestor.is_dir():
        raise ConfigError("output", cfg.output, f"a path under a directory; {ancestor} is a file")
    if not os.access(ancestor, os.W_OK):
        raise ConfigError("output", cfg.output, f"a writable location; {ancestor} is read-only")


# -- the model's shape ----------------------------------------------------------------------
def model_config_for(path: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a resolved model path, without loading weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"cannot read the model config of {path}: {first}") from exc


def check_against_model(cfg: TrainConfig, model_config: Any) -> None:
    """Sequence length, target modules and rank checked against the architecture.

    Raises:
        ConfigError: ``seq-len`` beyond the model's context, a ``target`` module the model does
            not have, or a ``rank`` larger than the smaller dimension of a targeted layer (the
            update ``B @ A`` cannot have a higher rank than that, so extra rank is only waste).
    """
    context = getattr(model_config, "max_position_embeddings", None)
    if isinstance(context, int) and cfg.seq_len > context:
        raise ConfigError(
            "seq-len", cfg.seq_len, f"at most {context} (the model's max_position_embeddings)"
        )
    from tunesmith.methods import get_method

    if not get_method(cfg.method).targets_modules:
        return  # the method sits at positions it fixes itself
    from tunesmith.methods.targets import check_targets_exist, resolve_targets
    from tunesmith.shape import meta_model

    targets = resolve_targets(cfg.target, model_config)
    model = meta_model(model_config, cfg.trust_remote_code)
    check_targets_exist(model, targets)
    smallest = min(
        (
            (min(m.in_features, m.out_features), name)
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and any(name == t or name.endswith("." + t) for t in targets)
        ),
        default=None,
    )
    if smallest is not None and cfg.rank > smallest[0]:
        raise ConfigError(
            "rank",
            cfg.rank,
            f"at most {smallest[0]}, the smaller dimension of the targeted layer {smallest[1]}",
        )


# -- the memory plan ------------------------------------------------------------------------
def plan_device(device: torch.device) -> str:
    """The planner's name for the device this run trains on."""
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def objective_plan_settings(cfg: TrainConfig, spec) -> dict[str, Any]:
    """The planner's terms of a preference objective: rows per example and the reference pass
    (the same choice :class:`~tunesmith.train.pref_steps.PreferenceRun` makes)."""
    if cfg.objective == "sft":
        return {}
    from tunesmith.objectives import get_objective

    objective = get_objective(cfg.objective)
    reference = "none"
    if objective.needs_reference:
        reference = (
            "cached" if cfg.init_from else "frozen-copy" if not spec.peft_format else "adapter-off"
        )
    return {"sequences_per_example": objective.sequences_per_example, "reference": reference}


def memory_plan(cfg: TrainConfig, model_config: Any, device: torch.device, precision: str):
    """Plan the run from the config alone; refuse a run that will not fit unless ``--force``.

    Returns:
        The :class:`tunesmith.plan.Plan` (the caller writes it as the run's ``plan.json``).

    Raises:
        UserInputError: the verdict is ``does-not-fit`` and ``force`` is off; the message
            carries the planner's recommendation.
    """
    from tunesmith.methods import get_method
    from tunesmith.plan import plan_for_run
    from tunesmith.train.speed import train_attention

    spec = get_method(cfg.method)

    def planned(checkpointing: bool):
        return plan_for_run(
            model_config,
            device=plan_device(device),
            method=cfg.method,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            grad_accum=cfg.grad_accum,
            attn=train_attention(torch.device(device), cfg.seq_len),
            gradient_checkpointing=checkpointing,
            precision=precision,
            rank=cfg.rank,
            target=cfg.target if spec.targets_modules else "attn-qv",
            dropout=cfg.dropout,
            model_name=cfg.model,
            **objective_plan_settings(cfg, spec),
        )

    # Activation checkpointing recomputes the forward (~1/3 more compute), so it is used only
    # when the plan says the run does not fit without it (the run reads the plan's setting).
    plan = planned(False)
    if not plan.fits and spec.gradient_checkpointing:
        with_checkpointing = planned(True)
        if with_checkpointing.fits:
            return with_checkpointing
    if plan.fits or cfg.force:
        return plan
    rec = plan.recommendation
    advice = "; ".join(rec.get("changes") or []) or "a smaller model or a larger device"
    raise UserInputError(
        f"the memory plan says this run does not fit on {plan_device(device)}: it needs "
        f"{plan.total_bytes / GIB:.1f} GiB of {plan.budget_bytes / GIB:.1f} GiB. "
        f"Recommended: {advice}. Pass --force to train anyway."
    )


def cap_device_memory(device: torch.device, fraction: float = CUDA_MEMORY_FRACTION) -> None:
    """On CUDA, limit this process's share of device memory (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction, device.index or 0)


# -- out of memory --------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError`` or the CPU allocator's RuntimeError for a failed allocation."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # CPU: "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes";
    # MPS and older CUDA builds: "... out of memory ...".
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "failed to allocate")
    )


def free_memory(device: torch.device) -> None:
    """Return what a failed step held: Python garbage first, then the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- disk -----------------------------------------------------------------------------------
def check_free_disk(path: Path, needed_bytes: int, what: str, resumable: bool = True) -> None:
    """:func:`tunesmith.disk.check_free_disk` for a run's saves.

    ``resumable``: earlier checkpoints exist, so the message says the run can be resumed
    once space is freed.
    """
    advice = "Free some space, then continue with --resume (earlier checkpoints are kept)"
    disk.check_free_disk(path, needed_bytes, what, advice if resumable else "")


def tensor_bytes(tensors) -> int:
    """Bytes of every tensor in a (nested) dict/list structure, e.g. an optimizer state."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(tensor_bytes(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(tensor_bytes(v) for v in tensors)
    return 0
