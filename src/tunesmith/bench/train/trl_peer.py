"""The TRL peer of the training bench: ``SFTTrainer`` as a user writes it, default and tuned.

trl-default  ``SFTConfig`` defaults (gradient checkpointing on, completion-only loss on
             prompt/completion data) and fp32, the setting the CPU defaults leave
             (``bf16=True`` without ``use_cpu`` refuses to start).
trl-tuned    TRL with its speed options: bf16 autocast, padding-free batches, no checkpointing.

The only module of tunesmith that imports ``trl`` (the ``[bench]`` extra), and only inside
its functions: ``tunesmith bench train --variants tunesmith`` runs without it.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from tunesmith.bench.train.data import read_conversations
from tunesmith.bench.train.measure import (
    ADAPTERS,
    LORA,
    BenchSettings,
    StepClock,
    eval_loss,
    finish_row,
    linear_params,
    peak_rss_bytes,
)

VARIANTS: tuple[str, ...] = ("trl-default", "trl-tuned")


def available() -> bool:
    """Whether ``trl`` is installed (``pip install 'tunesmith[bench]'``)."""
    return importlib.util.find_spec("trl") is not None


class _CountingCollator:
    """Wraps TRL's collator to record each batch's (trained, processed, padded) token counts."""

    def __init__(self, inner, log: list[tuple[int, int, int]]):
        self.inner, self.log = inner, log

    def __call__(self, features):
        batch = self.inner(features)
        labels = batch["labels"]
        if "attention_mask" in batch:
            processed = int(batch["attention_mask"].sum())
        else:  # padding-free: one flat row, no padding unless pad_to_multiple_of
            processed = labels.numel()
        self.log.append((int((labels != -100).sum()), processed, labels.numel() - processed))
        return batch


def trainer_args(settings, out_dir: Path) -> dict[str, Any]:
    """The ``TrainingArguments`` both benches set to match tunesmith's run.

    ``settings``: any bench settings with ``steps``, ``batch_size``, ``lr``,
    ``warmup_ratio``, ``seed`` and ``seq_len``.
    """
    return dict(
        output_dir=str(out_dir),
        report_to="none",
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(settings.warmup_ratio * settings.steps),
        seed=settings.seed,
        save_strategy="no",
        logging_steps=1,  # per-step losses; the cost is one .item() per step
        disable_tqdm=True,
        max_length=settings.seq_len,
    )


def lora_config(adapter: dict[str, Any], model_config):
    """The bench's adapter (one of :data:`ADAPTERS`) as a peft ``LoraConfig`` for TRL's
    ``peft_config``, its target preset resolved for ``model_config``'s architecture."""
    from peft import LoraConfig

    from tunesmith.methods.targets import resolve_targets

    return LoraConfig(
        r=adapter["rank"],
        lora_alpha=adapter["alpha"],
        lora_dropout=adapter["dropout"],
        target_modules=list(resolve_targets(adapter["target"], model_config)),
        use_dora=adapter["method"] == "dora",
        task_type="CAUSAL_LM",
    )


def step_recorder(clock: StepClock, losses: list[float]):
    """A ``TrainerCallback`` that ticks ``clock`` at each step's end and collects the losses."""
    from transformers import TrainerCallback

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.tick()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Stamp()


def build_trainer(
    trainer_type, model_name: str, args, rows_path: str, clock: StepClock, losses: list[float],
    adapter: dict[str, Any] = LORA,
):  # fmt: skip
    """A TRL trainer of ``trainer_type`` on the loaded model and a JSONL file's rows (offline).

    ``adapter`` (:func:`lora_config`) and :func:`step_recorder` are attached.

    Returns:
        ``(trainer, tokenizer)``.
    """
    import torch
    from datasets import Dataset

    from tunesmith.models import load_model_and_tokenizer

    model, tok, _src = load_model_and_tokenizer(model_name)
    if torch.cuda.is_available():
        model.to("cuda")
    rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines()]
    trainer = trainer_type(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora_config(adapter, model.config),
        callbacks=[step_recorder(clock, losses)],
    )
    return trainer, tok


def trl_config(settings: BenchSettings, out_dir: Path, tuned: bool):
    """The ``SFTConfig`` a user writes: defaults (fp32 on CPU) or TRL's speed options."""
    import torch
    from trl import SFTConfig

    from tunesmith.precision import cpu_has_native_bf16

    common = trainer_args(settings, out_dir)
    if not tuned:
        # SFTConfig's bf16=True default refuses CPUs without use_cpu; a user sets bf16=False.
        return SFTConfig(**common, bf16=torch.cuda.is_available())
    import importlib.util

    bf16 = torch.cuda.is_available() or cpu_has_native_bf16()
    return SFTConfig(
        **{**common, "max_length": None},  # padding-free without packing needs max_length=None
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        padding_free=True,
        gradient_checkpointing=False,
        # Liger's fused kernels (Triton, CUDA only) are part of TRL's tuned recipe where installed.
        use_liger_kernel=torch.cuda.is_available()
        and importlib.util.find_spec("liger_kernel") is not None,
    )


def run_trl(
    settings: BenchSettings, data: dict[str, str], workdir: Path, tuned: bool
) -> dict[str, Any]:
    """TRL ``SFTTrainer`` on the already loaded model and an in-memory dataset (offline)."""
    import torch
    from trl import SFTTrainer

    t0 = time.perf_counter()
    args = trl_config(settings, workdir / "trl", tuned)
    clock, losses, counts = StepClock(), [], []
    trainer, tok = build_trainer(
        SFTTrainer, settings.model, args, data["train_prompt_completion"], clock, losses,
        ADAPTERS[settings.adapter],
    )  # fmt: skip
    trainer.data_collator = _CountingCollator(trainer.data_collator, counts)
    setup_s = time.perf_counter() - t0
    trainer.train()
    peak = peak_rss_bytes()
    precision = trainer.accelerator.mixed_precision
    autocast = torch.bfloat16 if precision == "bf16" else None
    held_out = read_conversations(data["eval_messages"])[: settings.eval_limit]
    return finish_row(
        "trl-tuned" if tuned else "trl-default",
        precision="bf16" if autocast else "fp32",
        checkpointing=bool(args.gradient_checkpointing),
        clock=clock,
        per_step=counts[: settings.steps],
        params=linear_params(trainer.model),
        losses=losses,
        peak_rss=peak,
        eval_value=eval_loss(trainer.model, tok, held_out, settings, autocast),
        setup_s=setup_s,
    )
