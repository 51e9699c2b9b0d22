"""A DeepSpeed JSON config filled from tunesmith's settings and checked against them.

tunesmith keeps its loop under DeepSpeed: its batch plan and accumulation, its AdamW and lr
schedule; the engine brings ZeRO partitioning, gradient reduction, clipping and (bf16/fp16)
fp32 master weights. So the keys that describe the loop are tunesmith's: ``"auto"`` is filled
from the run's settings, and a value that says otherwise stops the run, naming the file and
the key (a different clipping norm or precision would train differently from what
config.yaml records; a different micro-batch would make DeepSpeed's bookkeeping disagree with
the data actually fed). Any other ``"auto"`` (bucket sizes and such) is dropped, which leaves
it at DeepSpeed's default.

Parsing and dotted-key lookup use accelerate's ``HfDeepSpeedConfig``. transformers' subclass
of it is avoided on purpose: creating one registers a process-wide "ZeRO-3 is on" flag that
makes ``from_pretrained`` partition weights at load and ``generate`` wait for all ranks, while
tunesmith reloads and evaluates the trained model on rank 0 alone.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import UserInputError

STAGES = (1, 2, 3)


def read_config(path: str):
    """The parsed config (accelerate's ``HfDeepSpeedConfig``) of a DeepSpeed JSON file."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    try:
        ds = HfDeepSpeedConfig(path)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"--distributed-config {path}: not a DeepSpeed JSON: {exc}") from None
    if not isinstance(ds.config, dict):
        raise UserInputError(f"--distributed-config {path}: not a DeepSpeed JSON object")
    return ds


def fill_config(
    path: str,
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    max_grad_norm: float,
    precision: str,
    on_nan: str = "stop",
) -> dict[str, Any]:
    """The config of ``path`` with tunesmith's values in place of ``"auto"``.

    Args:
        path: the ``--distributed-config`` JSON file.
        micro_batch: ``--batch-size`` (examples per process per planned micro-batch).
        grad_accum: ``--grad-accum``.
        world_size: number of processes.
        max_grad_norm: ``--max-grad-norm`` (DeepSpeed's ``gradient_clipping``).
        precision: resolved ``--precision`` (fp32, bf16 or fp16).
        on_nan: ``--on-nan``; ``skip`` relies on DeepSpeed dropping a non-finite update.

    Raises:
        UserInputError: a ZeRO stage other than 1-3, an ``optimizer`` or ``scheduler``
            section, or a value that contradicts tunesmith's settings.
    """
    ds = read_config(path)
    where = f"--distributed-config {path}"
    stage = ds.get_value("zero_optimization.stage", 0)
    if stage not in STAGES:
        raise UserInputError(
            f"{where}: zero_optimization.stage is {stage!r}; tunesmith drives ZeRO stages 1, 2 "
            "and 3 (stage 0 is plain data parallelism: use --distributed ddp)"
        )
    for section in ("optimizer", "scheduler"):
        if section in ds.config:
            raise UserInputError(
                f'{where}: remove "{section}": tunesmith passes its own AdamW (--lr, '
                "--weight-decay) and lr schedule (--lr-scheduler, --warmup-ratio) to DeepSpeed"
            )
    wanted = {
        "train_micro_batch_size_per_gpu": (micro_batch, "--batch-size"),
        "gradient_accumulation_steps": (grad_accum, "--grad-accum"),
        "train_batch_size": (
            micro_batch * grad_accum * world_size,
            f"--batch-size x --grad-accum x {world_size} processes",
        ),
        "gradient_clipping": (max_grad_norm, "--max-grad-norm"),
        "bf16.enabled": (precision == "bf16", f"--precision {precision}"),
        "fp16.enabled": (precision == "fp16", f"--precision {precision}"),
        # tunesmith hands DeepSpeed a torch AdamW, which ZeRO calls "untested".
        "zero_allow_untested_optimizer": (True, "tunesmith's torch AdamW"),
    }
    wrong = []
    for key, (value, source) in wanted.items():
        node, leaf = ds.find_config_node(key)
        current = None if node is None else node.get(leaf)
        if current is None or current == "auto":
            _set(ds.config, key, value)
        elif current != value:
            wrong.append(f"{key} is {current!r} but {source} means {value!r}")
    if wrong:
        raise UserInputError(
            f"{where}: " + "; ".join(wrong) + ' (set these keys to "auto" or remove them)'
        )
    if on_nan == "skip" and precision == "bf16" and ds.is_false("bf16.check_grad_overflow"):
        raise UserInputError(
            f"{where}: --on-nan skip needs bf16.check_grad_overflow (DeepSpeed drops a "
            "non-finite update only when it checks); remove the key or use --on-nan stop"
        )
    return _without_auto(ds.config)


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        config = config.setdefault(name, {})
    config[leaf] = value


def _without_auto(node: Any) -> Any:
    """``node`` with every remaining ``"auto"`` removed (DeepSpeed then uses its default)."""
    if not isinstance(node, dict):
        return node
    return {k: _without_auto(v) for k, v in node.items() if v != "auto"}


def config_for_run(cfg, world_size: int, device) -> dict[str, Any]:
    """:func:`fill_config` for a ``TrainConfig`` on ``world_size`` processes of ``device``."""
    from tunesmith.precision import resolve_precision

    return fill_config(
        cfg.distributed_config,
        micro_batch=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        world_size=world_size,
        max_grad_norm=cfg.max_grad_norm,
        precision=resolve_precision(cfg.precision, device),
        on_nan=cfg.on_nan,
    )
