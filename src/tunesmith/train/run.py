"""``tunesmith train`` end to end: resolve -> data -> plan -> load -> adapt -> eval -> train -> save -> eval.

This is the workflow; every stage is a library call (data cleaning, method registry, loop,
evaluation, report) so the function reads top to bottom like the run it performs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.atomic import atomic_dir, write_json, write_text
from tunesmith.config import TrainConfig, load_yaml, make_config, to_yaml
from tunesmith.data.records import Conversation
from tunesmith.errors import UserInputError
from tunesmith.train.precision import resolve_precision, torch_dtype
from tunesmith.train.speed import adapter_autocast, train_attention

BASE_INFO = "tunesmith_base.json"  # written into adapter/: which base and method made it


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    losses: list[float]
    eval: dict[str, Any] | None
    trainable_params: int
    total_params: int
    train_seconds: float
    tokens_per_s: float
    timings: dict[str, float] = field(default_factory=dict)


def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    return Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """Create the run directory; refuse to overwrite a finished or resumable run."""
    run_dir = new_run_dir(cfg)
    if run_dir.exists() and cfg.overwrite:
        import shutil

        shutil.rmtree(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if (run_dir / "checkpoints").is_dir() and not (run_dir / "adapter").exists():
            raise UserInputError(
                f"{run_dir} holds an unfinished run; continue it with --resume {run_dir}"
            )
        raise UserInputError(
            f"output directory {run_dir} is not empty; choose another --output or pass --overwrite"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserInputError(f"{run_dir} is not a tunesmith run directory (no config.yaml)")
    return make_config(load_yaml(path))


# -- data -----------------------------------------------------------------------------------
def prepare_data(
    cfg: TrainConfig, run_dir: Path, tokenizer, reuse: bool = False
) -> tuple[list[Conversation], list[Conversation], dict]:
    """Clean the training data into ``run_dir/data`` and read it back.

    With no ``--data``, the bundled clinic demo is generated first (raw file with its planted
    duplicates and broken records, and the held-out eval file), then cleaned like user data.
    """
    from tunesmith.data.clean import clean
    from tunesmith.data.readers import read_files

    data_dir = run_dir / "data"
    if (
        reuse
        and (data_dir / "train.jsonl").is_file()
        and (data_dir / "clean_report.json").is_file()
    ):
        # Resuming: the step counter indexes into *these* examples, so never re-clean.
        import json

        report = json.loads((data_dir / "clean_report.json").read_text())
        train = [c for c in read_files([data_dir / "train.jsonl"]) if isinstance(c, Conversation)]
        eval_path = data_dir / "train.eval.jsonl"
        evals = (
            [c for c in read_files([eval_path]) if isinstance(c, Conversation)]
            if eval_path.is_file()
            else []
        )
        return train, evals[: cfg.eval_limit] if cfg.eval_limit else evals, report
    inputs, eval_inputs = list(cfg.data), [cfg.eval_data] if cfg.eval_data else None
    if not inputs:
        from tunesmith.demo.dataset import write_demo_eval, write_raw_demo

        inputs = [str(write_raw_demo(data_dir / "demo_raw.jsonl", seed=0))]
        eval_inputs = [str(write_demo_eval(data_dir / "demo_eval.jsonl", seed=0))]
    result = clean(
        inputs,
        data_dir / "train.jsonl",
        eval_inputs=eval_inputs,
        eval_share=0.0 if eval_inputs else 0.1,
        tokenizer=tokenizer,
        max_tokens=cfg.seq_len,
        seed=cfg.seed,
        on_error=cfg.on_error,
    )
    train = [c for c in read_files([result.train_path]) if isinstance(c, Conversation)]
    evals = (
        [c for c in read_files([result.eval_path]) if isinstance(c, Conversation)]
        if result.eval_path
        else []
    )
    if cfg.eval_limit:
        evals = evals[: cfg.eval_limit]
    return train, evals, result.report


# -- model ----------------------------------------------------------------------------------
def method_args(cfg: TrainConfig, model_config) -> Any:
    from tunesmith.methods import MethodArgs
    from tunesmith.methods.targets import resolve_targets

    return MethodArgs(
        rank=cfg.rank,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        target=resolve_targets(cfg.target, model_config),
        num_virtual_tokens=cfg.num_virtual_tokens,
        bottleneck=cfg.bottleneck,
        freeze_top_k=cfg.freeze_top_k,
    )


def load_for_training(cfg: TrainConfig, device: torch.device, checkpointing: bool = False):
    """Load base + apply the method. Returns (model, tokenizer, source, spec, autocast dtype).

    Precision policy: with bf16 compute, a frozen base is *stored* in bf16 (half the memory
    and no per-step casts) while adapter weights and their optimizer state stay fp32 (peft
    upcasts adapters; LoRA adapters then compute in bf16 under autocast, see
    :func:`tunesmith.train.speed.adapter_autocast`); methods that train base weights (full,
    freeze) keep fp32 master weights and run under autocast, since AdamW on bf16 weights loses
    small updates.
    """
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.methods import get_method
    from tunesmith.methods.targets import check_targets_exist
    from tunesmith.models import load_model_and_tokenizer

    spec = get_method(cfg.method)
    precision = resolve_precision(cfg.precision, device)
    trains_base = not spec.peft_format
    qconf = None
    if spec.quantized_base:
        from tunesmith.methods.qlora import quantization_config

        qconf = quantization_config()
    dtype = torch.float32 if (trains_base or precision == "fp32") else torch_dtype(precision)
    model, tok, src = load_model_and_tokenizer(
        cfg.model,
        dtype=dtype,
        quantization_config=qconf,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
        attn_implementation=train_attention(device, cfg.seq_len),
    )
    ensure_chat_template(tok, cfg.template)  # saved with the adapter by save_final
    args = method_args(cfg, model.config)
    # Activation checkpointing only where the memory plan needs it (train/guard.py).
    args.extra["gradient_checkpointing"] = checkpointing
    if checkpointing and spec.gradient_checkpointing and not spec.quantized_base:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.name in ("lora", "qlora", "dora", "rslora"):  # the others sit at fixed positions
        check_targets_exist(model, args.target)
    if qconf is None:
        model.to(device)
    model = spec.apply(model, args)
    # Autocast: methods with fp32 master weights (full, freeze) and LoRA adapters (train/speed.py).
    mixed = trains_base or adapter_autocast(spec.name, precision)
    autocast = torch_dtype(precision) if (mixed and precision != "fp32") else None
    return model, tok, src, spec, precision, autocast


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_final(model, tokenizer, run_dir: Path, cfg: TrainConfig, spec) -> Path:
    """Write the trained adapter (or, for full/freeze, the model) atomically."""
    target = run_dir / ("adapter" if spec.peft_format else "model")
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / BASE_INFO, {"model": cfg.model, "method": cfg.method})
    return target


# -- the workflow ---------------------------------------------------------------------------
def run_training(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    say: Callable[[str], None] = print,
    progress_factory: Callable[[int], Any] | None = None,
) -> RunResult:
    """Run a whole fine-tune as configured; see the module docstring for the stages."""
    from tunesmith.data.dataset import tokenize_conversations
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.eval.evaluate import eval_report, evaluate_side, perplexities
    from tunesmith.models.loading import load_tokenizer, resolve_model
    from tunesmith.plan import write_plan
    from tunesmith.train import checkpoint as ckpt
    from tunesmith.train import guard
    from tunesmith.train.fastpath import apply_fast_paths
    from tunesmith.train.loop import LoopSettings, TrainLoop, steps_for_epochs

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    # Launched by torchrun / accelerate launch: join the process group; rank 0 writes files.
    dist = start_distributed(load_run_config(Path(resume)) if resume else cfg)
    if not dist.is_main:
        say, progress_factory = _silent, None
    device = dist.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    guard.cap_device_memory(device)
    torch.manual_seed(cfg.seed)

    if resume:
        run_dir = Path(resume)
        saved = load_run_config(run_dir)
        cfg = saved
        if cfg.nproc != dist.world_size:
            raise UserInputError(
                f"{run_dir} was trained on {cfg.nproc} process(es) and the batch plan depends on "
                f"it; resume with --nproc {cfg.nproc} (this launch has {dist.world_size})"
            )
        resume_from, skipped = ckpt.latest_valid_checkpoint(run_dir / "checkpoints")
        for bad in skipped:
            say(f"checkpoint {bad.name} is corrupt or partial; skipping it")
        if resume_from is None:
            raise UserInputError(f"{run_dir} has no valid checkpoint to resume from")
    else:
        resume_from = None
        if cfg.nproc > 1 and not dist.active:
            raise UserInputError(
                f"nproc {cfg.nproc} needs a launcher: run `tunesmith train --nproc {cfg.nproc}` "
                "or torchrun / accelerate launch (see docs/distributed.md)"
            )
        cfg = cfg.model_copy(update={"nproc": dist.world_size})  # config.yaml: what ran
        if dist.mode == "deepspeed":  # --resume must find the same engine and its config
            cfg = cfg.model_copy(
                update={
                    "distributed": "deepspeed",
                    "distributed_config": os.path.abspath(dist.distributed_config),
                }
            )
        # Validate what can be checked cheaply before anything is written or loaded.
        guard.check_paths(cfg)
        source = resolve_model(cfg.model)
        from tunesmith.methods import get_method

        get_method(cfg.method)
        model_config = guard.model_config_for(source.path, cfg.trust_remote_code)
        guard.check_against_model(cfg, model_config)
        # Sharded: the per-rank plan decides (below), not the single-process one.
        memory_plan = guard.memory_plan(
            cfg.model_copy(update={"force": True}) if dist.sharded else cfg,
            model_config,
            device,
            resolve_precision(cfg.precision, device),
        )
        if dist.sharded:
            memory_plan = _per_rank_plan(memory_plan, model_config, dist, cfg.force)

    # Data first: a bad file should fail before minutes of model loading.
    tokenizer = load_tokenizer(
        source if not resume else resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code
    )
    ensure_chat_template(tokenizer, cfg.template)
    if not resume:
        if dist.is_main:
            run_dir = prepare_run_dir(cfg)
            write_text(run_dir / "config.yaml", to_yaml(cfg))
            write_plan(memory_plan, run_dir / "plan.json")
        run_dir = dist.broadcast(run_dir if dist.is_main else None)
    # Until training starts nothing of value exists: bad input leaves no half-made run behind.
    with guard.discard_on_bad_input(run_dir, enabled=not resume and dist.is_main):
        with dist.main_first():  # rank 0 cleans; the others read its output
            train_convs, eval_convs, report = prepare_data(
                cfg, run_dir, tokenizer, reuse=bool(resume) or not dist.is_main
            )
        say(
            f"data: {report['input_records']} records -> {len(train_convs)} train, "
            f"{len(eval_convs)} eval (dropped {report['exact_duplicates']} exact dup, "
            f"{report['near_duplicates']} near dup, {len(report['invalid'])} invalid, "
            f"{report['eval_leaks']} eval leaks)"
        )
        timings["data_s"] = time.perf_counter() - t_start

        t = time.perf_counter()
        model, tokenizer, src, spec, precision, autocast = load_for_training(
            cfg, device, checkpointing=_plan_checkpointing(run_dir)
        )
        # Hand-fused dropout, RMSNorm and attention on CPU, and the loop's pass policy.
        fast_paths = apply_fast_paths(
            model, device, kv_prefix=not spec.gradient_checkpointing, packed_rows=cfg.packing
        )
        trainable, total = count_params(model)
        say(
            f"model: {src.display}, method {cfg.method}, precision {precision}, "
            f"trainable {trainable:,} / {total:,} ({100 * trainable / total:.3f}%)"
        )
        timings["load_s"] = time.perf_counter() - t

        train_ex = tokenize_conversations(
            tokenizer, train_convs, seq_len=cfg.seq_len, train_on_prompt=cfg.train_on_prompt
        )
        eval_ex = (
            tokenize_conversations(tokenizer, eval_convs, seq_len=cfg.seq_len) if eval_convs else []
        )
        if cfg.packing:
            from tunesmith.data.packing import check_packable, pack_examples

            check_packable(model, kv_prefix=not spec.gradient_checkpointing)
            n_examples = len(train_ex)
            # From here on a training "example" is a packed row of up to seq-len tokens.
            train_ex = pack_examples(train_ex, cfg.seq_len)
            say(
                f"packing: {n_examples} examples -> {len(train_ex)} rows of <= {cfg.seq_len} tokens"
            )
    max_steps = cfg.max_steps or steps_for_epochs(
        len(train_ex), cfg.batch_size * dist.world_size, cfg.grad_accum, cfg.epochs
    )

    base_side = None
    if eval_convs and not cfg.skip_base_eval and resume_from is None and dist.is_main:
        t = time.perf_counter()
        say(f"evaluating the base model on {len(eval_convs)} held-out examples ...")
        with _adapter_disabled(model):
            base_side = evaluate_side(
                model,
                tokenizer,
                eval_convs,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.eval_batch_size,
            )
            # Answer and general-text perplexity: the baseline for the forgetting check.
            base_side.metrics.update(perplexities(model, tokenizer, eval_convs))
        write_json(
            run_dir / "eval_base.json",
            {"metrics": base_side.metrics, "generations": [g.text for g in base_side.generations]},
        )
        say("base: " + _fmt_metrics(base_side.metrics))
        timings["base_eval_s"] = time.perf_counter() - t
    elif resume_from is not None and (run_dir / "eval_base.json").is_file():
        base_side = _load_base_side(run_dir / "eval_base.json")

    settings = LoopSettings(
        max_steps=max_steps,
        batch_size=cfg.batch_size,
        group_by_length=cfg.group_by_length,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        seed=cfg.seed,
        autocast_dtype=autocast,
        on_nan=cfg.on_nan,
        keep_input_dtype=adapter_autocast(cfg.method, precision),
    )
    dist.barrier()  # the other ranks wait for rank 0's base evaluation
    loop = TrainLoop(
        model, train_ex, tokenizer.pad_token_id, settings, run_dir, device, say=say, dist=dist,
        fast_paths=fast_paths,
    )  # fmt: skip
    per_step = cfg.batch_size * cfg.grad_accum * dist.world_size
    say(
        f"training {max_steps} steps x {per_step} examples ({len(train_ex)} train examples)"
        + (f" on {dist.world_size} processes ({dist.mode})" if dist.active else "")
    )
    progress = progress_factory(max_steps) if progress_factory else None
    t = time.perf_counter()
    try:
        result = loop.train(resume_from=resume_from, progress=progress)
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    timings["train_s"] = time.perf_counter() - t
    if eval_ex:
        loss = loop.eval_loss(eval_ex)
        from tunesmith.train.metrics import MetricsLog

        if dist.is_main:
            MetricsLog(run_dir / "metrics.jsonl", resume_step=max_steps).write(
                {"step": max_steps, "eval_loss": round(loss, 6)}
            )
    if dist.active:
        # Rank 0 saves and evaluates a whole model; the other ranks are done.
        model = _whole_model_on_main(model, loop, dist, cfg, device)
        del loop
        if not dist.is_main:
            dist.close()
            return RunResult(
                run_dir, max_steps, result.losses, None, trainable, total,
                result.elapsed_s, result.tokens_per_s, timings,
            )  # fmt: skip
    saved = [p for p in model.parameters() if p.requires_grad or not spec.peft_format]
    guard.check_free_disk(run_dir, guard.tensor_bytes(saved), "final adapter")
    adapter_dir = save_final(model, tokenizer, run_dir, cfg, spec)

    eval_json = None
    if eval_convs:
        t = time.perf_counter()
        say("evaluating the fine-tuned model ...")
        adapted = evaluate_side(
            model,
            tokenizer,
            eval_convs,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.eval_batch_size,
        )
        eval_json = eval_report(
            eval_convs,
            base_side,
            adapted,
            model=src.display,
            adapter=str(adapter_dir),
            extra={"adapted": perplexities(model, tokenizer, eval_convs)},
        )
        write_json(run_dir / "eval.json", eval_json)
        timings["eval_s"] = time.perf_counter() - t
    _write_report(run_dir, say)
    timings["total_s"] = time.perf_counter() - t_start
    dist.close()
    return RunResult(
        run_dir=run_dir,
        steps=max_steps,
        losses=result.losses,
        eval=eval_json,
        trainable_params=trainable,
        total_params=total,
        train_seconds=result.elapsed_s,
        tokens_per_s=result.tokens_per_s,
        timings=timings,
    )


def _silent(message: str) -> None:
    """``say`` on ranks other than 0: one voice per run."""


def start_distributed(cfg: TrainConfig):
    """This process's :class:`~tunesmith.distributed.DistContext` (inactive for one process)."""
    from tunesmith.distributed import setup

    dist = setup(cfg.distributed, cfg.distributed_config)
    if dist.mode == "deepspeed":  # a config contradicting the run stops it before any work
        from tunesmith.distributed.deepspeed_config import config_for_run

        cfg = cfg.model_copy(update={"distributed_config": dist.distributed_config})
        dist.engine_config = config_for_run(cfg, dist.world_size, dist.device)
    return dist


def _per_rank_plan(memory_plan, model_config, dist, force: bool):
    """The plan of one rank when the ranks shard the model state; refuse if it cannot fit."""
    from tunesmith.plan import shard_plan

    per_rank = shard_plan(memory_plan, model_config, dist.world_size, dist.plan_sharding)
    if per_rank.fits or force:
        return per_rank
    gib = 1024**3
    raise UserInputError(
        f"the memory plan says one of {dist.world_size} {dist.plan_sharding} processes needs "
        f"{per_rank.total_bytes / gib:.1f} GiB of {per_rank.budget_bytes / gib:.1f} GiB; use "
        "more processes, a smaller --batch-size or --seq-len, or pass --force to train anyway"
    )


def _whole_model_on_main(model, loop, dist, cfg: TrainConfig, device: torch.device):
    """The trained model, whole, on rank 0 (None elsewhere); every rank must call this.

    DDP replicas are whole already. Sharded (FSDP) parameters are gathered, the shards
    freed, and rank 0 loads a fresh copy of the base with the method applied and the
    gathered trained weights in it. Under DeepSpeed (any ZeRO stage) the gathered weights
    are the fp32 masters, which the reloaded model takes in tunesmith's own dtype policy.
    """
    from tunesmith.train.checkpoint import trainable_state

    if not dist.sharded:
        return model if dist.is_main else None
    if loop.engine is not None:
        from tunesmith.distributed.deepspeed_engine import full_trainable_state

        weights = full_trainable_state(model, keep=dist.is_main)  # a collective
        loop.engine.destroy()
    else:
        weights = trainable_state(model)  # a collective: full tensors on every rank
    loop.forward = loop.optimizer = loop.engine = None
    del model
    if not dist.is_main:
        return None
    import gc

    gc.collect()
    fresh = load_for_training(cfg, device)[0]
    unexpected = fresh.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise UserInputError(f"gathered weights do not fit the rebuilt model: {unexpected[0]}")
    return fresh


def _plan_checkpointing(run_dir: Path) -> bool:
    """Whether the run's memory plan (``plan.json``, also on resume) turned checkpointing on."""
    import json

    try:
        plan = json.loads((run_dir / "plan.json").read_text())
    except (OSError, ValueError):
        return False
    return bool((plan.get("inputs") or {}).get("gradient_checkpointing"))


def _adapter_disabled(model):
    import contextlib

    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.disable_adapter()
    return contextlib.nullcontext()  # full/freeze: evaluated before any step, so still the base


def _load_base_side(path: Path):
    import json

    from tunesmith.eval.evaluate import SideResult
    from tunesmith.eval.generate import Generation

    data = json.loads(path.read_text())
    return SideResult(data["metrics"], [Generation(t, 0, True) for t in data["generations"]])


def _fmt_metrics(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items())


def _write_report(run_dir: Path, say: Callable[[str], None]) -> None:
    try:
        from tunesmith.report import write_report

        write_report(run_dir)
    except Exception as exc:  # a report must never fail a finished training run
        say(f"warning: report.html not written: {exc}")


def train(
    config: TrainConfig | dict[str, Any] | None = None,
    /,
    *,
    resume: str | Path | None = None,
    say=print,
    **kwargs: Any,
) -> RunResult:
    """Library form of ``tunesmith train``: a config (object or dict) and/or keyword overrides.

    Example:
        ``train(method="lora", max_steps=150, output="runs/demo")``
    """
    values: dict[str, Any] = {}
    if isinstance(config, TrainConfig):
        values = config.model_dump()
    elif config:
        values = dict(config)
    values.update(kwargs)
    cfg = make_config(values)
    return run_training(cfg, resume=resume, say=say)
