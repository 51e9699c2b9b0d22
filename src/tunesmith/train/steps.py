"""The named steps of a training run, each a function that other workflows call too.

``tunesmith train`` (:mod:`tunesmith.train.run`) runs them in order: preflight, prepare data,
build model, evaluate base, fit, save, evaluate adapted, report. ``compare``, ``bench`` and
the server call the same functions instead of re-wiring loaders and loops.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.atomic import atomic_dir, write_json
from tunesmith.config import TrainConfig
from tunesmith.data.records import Conversation
from tunesmith.precision import resolve_precision, torch_dtype
from tunesmith.rundir import RunDir
from tunesmith.train.speed import adapter_autocast, train_attention


@dataclass
class DataSplit:
    """The cleaned conversations of a run and the cleaning report."""

    train: list[Conversation]
    eval: list[Conversation]
    report: dict[str, Any]

    @property
    def eval_conversations(self) -> list[Conversation]:
        """What the task metric scores (a preference split gives its chosen sides)."""
        return self.eval

    def summary(self) -> str:
        r = self.report
        return (
            f"data: {r['input_records']} records -> {len(self.train)} train, "
            f"{len(self.eval)} eval (dropped {r['exact_duplicates']} exact dup, "
            f"{r['near_duplicates']} near dup, {len(r['invalid'])} invalid, "
            f"{r['eval_leaks']} eval leaks)"
        )


@dataclass
class BuiltModel:
    """A base model with the method applied, ready for the loop."""

    model: Any
    tokenizer: Any
    source: Any  # models.loading.ModelSource
    spec: Any  # methods.MethodSpec
    precision: str
    autocast: torch.dtype | None
    fast_paths: Any = None  # train.fastpath.FastPaths: the CPU fast paths, with undo()

    @property
    def params(self) -> tuple[int, int]:
        return count_params(self.model)


# -- prepare data ---------------------------------------------------------------------------
def _read_convs(path: Path, limit: int | None = None) -> list[Conversation]:
    from itertools import islice

    from tunesmith.data.readers import read_files

    return list(islice((c for c in read_files([path]) if isinstance(c, Conversation)), limit))


def prepare_data(cfg: TrainConfig, run: RunDir, tokenizer, reuse: bool = False) -> DataSplit:
    """Clean the training data into ``run.data_dir`` and read it back.

    With no ``--data``, the bundled clinic demo is generated first (raw file with its planted
    duplicates and broken records, and the held-out eval file), then cleaned like user data.
    With ``reuse`` (resuming), data already cleaned is read back as it is: the step counter
    indexes into *these* examples, so it is never cleaned again. Streamed data
    (:func:`~tunesmith.train.data_plan.stream_plan`) is cleaned with bounded memory and only the
    examples ``--max-steps`` consumes are read back.
    """
    from tunesmith.data.clean import clean
    from tunesmith.train.data_plan import stream_plan

    run = RunDir(run)
    plan = stream_plan(cfg)
    if reuse and run.train_data.is_file() and run.clean_report.is_file():
        report = json.loads(run.clean_report.read_text())
        evals = _read_convs(run.eval_data, plan.eval_limit) if run.eval_data.is_file() else []
        return DataSplit(_read_convs(run.train_data, plan.train_limit), _limit(evals, cfg), report)
    inputs, eval_inputs = list(cfg.data), [cfg.eval_data] if cfg.eval_data else None
    if not inputs:
        from tunesmith.demo.dataset import write_demo_eval, write_raw_demo

        inputs = [str(write_raw_demo(run.data_dir / "demo_raw.jsonl", seed=0))]
        eval_inputs = [str(write_demo_eval(run.data_dir / "demo_eval.jsonl", seed=0))]
    result = clean(
        inputs,
        run.train_data,
        eval_inputs=eval_inputs,
        eval_share=0.0 if eval_inputs else 0.1,
        tokenizer=tokenizer,
        max_tokens=cfg.seq_len,
        seed=cfg.seed,
        on_error=cfg.on_error,
        read_options=plan.read_options,
        dedup_window=plan.dedup_window,
    )
    evals = _read_convs(result.eval_path, plan.eval_limit) if result.eval_path else []
    train = _read_convs(result.train_path, plan.train_limit)
    return DataSplit(train, _limit(evals, cfg), result.report)


def _limit(evals: list[Conversation], cfg: TrainConfig) -> list[Conversation]:
    return evals[: cfg.eval_limit] if cfg.eval_limit else evals


# -- build model ----------------------------------------------------------------------------
def method_args(cfg: TrainConfig, model_config) -> Any:
    """The method's plain arguments from the run config (configs never reach the builders)."""
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


def build_model(cfg: TrainConfig, device: torch.device, checkpointing: bool = False) -> BuiltModel:
    """Load the base and apply the method.

    Precision policy: with bf16 compute, a frozen base is *stored* in bf16 (half the memory
    and no per-step casts) while adapter weights and their optimizer state stay fp32 (peft
    upcasts adapters; LoRA adapters then compute in bf16 under autocast, see
    :func:`tunesmith.train.speed.adapter_autocast`); methods that train base weights (full,
    freeze) keep fp32 master weights and run under autocast, since AdamW on bf16 weights loses
    small updates. ``checkpointing``: activation checkpointing, on where the memory plan
    needs it.
    """
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.methods import get_method
    from tunesmith.methods.targets import check_targets_exist
    from tunesmith.models import load_model_and_tokenizer
    from tunesmith.train.fastpath import apply_fast_paths

    spec = get_method(cfg.method)
    precision = resolve_precision(cfg.precision, device)
    trains_base = spec.trains_base_weights
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
    ensure_chat_template(tok, cfg.template)  # saved with the adapter by save_result
    args = method_args(cfg, model.config)
    args.extra["gradient_checkpointing"] = checkpointing
    if checkpointing and spec.gradient_checkpointing and not spec.quantized_base:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.targets_modules:  # the others sit at fixed positions
        check_targets_exist(model, args.target)
    if qconf is None:
        model.to(device)
    if cfg.init_from:  # SFT -> DPO: the earlier adapter keeps training (train/init_from.py)
        from tunesmith.train.init_from import continue_adapter

        model = continue_adapter(model, cfg.init_from, spec, cfg.model)
    else:
        model = spec.apply(model, args)
    # Hand-fused dropout, RMSNorm and attention on CPU, and the loop's pass policy.
    fast_paths = apply_fast_paths(
        model, device, kv_prefix=spec.kv_prefix, packed_rows=cfg.packing,
        own_threads=bool(cfg.threads),
    )  # fmt: skip
    # Autocast: methods with fp32 master weights (full, freeze) and LoRA adapters (train/speed.py).
    mixed = trains_base or adapter_autocast(spec, precision)
    autocast = torch_dtype(precision) if (mixed and precision != "fp32") else None
    return BuiltModel(model, tok, src, spec, precision, autocast, fast_paths)


def loop_settings(cfg: TrainConfig, built: BuiltModel, max_steps: int):
    """The loop's settings from the run config and the built model's precision."""
    from tunesmith.train.loop import LoopSettings

    return LoopSettings(
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
        autocast_dtype=built.autocast,
        on_nan=cfg.on_nan,
        keep_input_dtype=adapter_autocast(built.spec, built.precision),
    )


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# -- evaluate -------------------------------------------------------------------------------
def adapter_disabled(model):
    """The base model's behaviour: the adapter switched off (full/freeze: not yet trained)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.disable_adapter()
    return contextlib.nullcontext()


def evaluate_base(model, tokenizer, evals: list[Conversation], cfg: TrainConfig, run: RunDir):
    """Evaluate the model with its adapter disabled; written to ``eval_base.json``.

    An identical earlier evaluation (same base files, questions, settings, versions and device:
    :mod:`tunesmith.eval.base_cache`) is read back instead; the result says so (``cached``).
    """
    from tunesmith.eval import base_cache
    from tunesmith.eval.evaluate import evaluate_side, perplexities

    cache_key = base_cache.key(cfg, evals, next(model.parameters()).device)
    cached = base_cache.load(cache_key)
    if cached is not None:
        write_json(run.eval_base_path, cached)
        return _base_side(cached, cached=True)
    with adapter_disabled(model):
        side = evaluate_side(
            model,
            tokenizer,
            evals,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.eval_batch_size,
        )
        # Answer and general-text perplexity: the baseline for the forgetting check.
        side.metrics.update(perplexities(model, tokenizer, evals))
    data = {"metrics": side.metrics, "generations": [g.text for g in side.generations]}
    write_json(run.eval_base_path, data)
    base_cache.store(cache_key, data)
    return side


def load_base_side(run: RunDir):
    """The base evaluation a run made before it was interrupted (None if it made none)."""
    if not run.eval_base_path.is_file():
        return None
    return _base_side(json.loads(run.eval_base_path.read_text()))


def _base_side(data: dict, cached: bool = False):
    """An ``eval_base.json`` object as the side the adapted evaluation is compared with (the
    generations' token counts are not stored: only their texts are reported)."""
    from tunesmith.eval.evaluate import SideResult
    from tunesmith.eval.generate import Generation

    gens = [Generation(t, 0, True) for t in data["generations"]]
    return SideResult(data["metrics"], gens, cached=cached)


def evaluate_adapted(
    model, tokenizer, evals, base_side, cfg: TrainConfig, run: RunDir, model_name: str,
    adapter_dir: Path,
):  # fmt: skip
    """Evaluate the trained model against the base side; written to ``eval.json``."""
    from tunesmith.eval.evaluate import eval_report, evaluate_side, perplexities

    adapted = evaluate_side(
        model, tokenizer, evals, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size
    )
    report = eval_report(
        evals,
        base_side,
        adapted,
        model=model_name,
        adapter=str(adapter_dir),
        extra={"adapted": perplexities(model, tokenizer, evals)},
    )
    write_json(run.eval_path, report)
    return report


def format_metrics(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items())


# -- save and report ------------------------------------------------------------------------
def save_result(model, tokenizer, run: RunDir, cfg: TrainConfig, spec) -> Path:
    """Write the trained adapter (or, for full/freeze, the model) atomically."""
    from tunesmith.train import guard

    saved = [p for p in model.parameters() if p.requires_grad or not spec.peft_format]
    guard.check_free_disk(
        run.path, guard.tensor_bytes(saved), "final adapter", resumable=run.checkpoints.is_dir()
    )
    target = run.final_dir(spec.peft_format)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / RunDir.BASE_INFO, {"model": cfg.model, "method": cfg.method})
    return target


def write_report(run: RunDir, say: Callable[[str], None]) -> None:
    """(Re)write ``report.html``; a report never fails a finished run."""
    try:
        from tunesmith.report import write_report as render

        render(run.path)
    except Exception as exc:
        say(f"warning: report.html not written: {exc}")


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str):
    """Add the block's wall time to ``timings[key]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t
