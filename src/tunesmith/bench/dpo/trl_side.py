"""The TRL variants of the DPO bench: ``DPOTrainer`` with a peft ``LoraConfig``.

trl-default  ``DPOConfig`` defaults except what must match tunesmith's run (steps, pairs per
             step, lr and its cosine schedule with warm-up, seq-len, beta, seed): gradient
             checkpointing on, dropout disabled, the reference = the model with its adapter
             off, scored in every step; fp32, the setting the CPU defaults leave (``bf16=True``
             without ``use_cpu`` refuses to start).
trl-tuned    TRL's speed options that apply to DPO on a CPU: bf16 autocast (``use_cpu``), no
             checkpointing, and ``precompute_ref_log_probs`` (the reference log-probs scored
             once before training, outside the timed steps: the row's setup time holds them).
             ``padding_free`` is not among them: TRL's DPO falls back to padding with it.

Like :mod:`tunesmith.bench.train.trl_peer`, this module imports ``trl`` only inside its
functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunesmith.bench.dpo.measure import DpoSettings, pair_tokens
from tunesmith.bench.train.measure import StepClock, finish_row, peak_rss_bytes
from tunesmith.bench.train.trl_peer import build_trainer, trainer_args

VARIANTS: tuple[str, ...] = ("trl-default", "trl-tuned")


class _CountingCollator:
    """Wraps TRL's collator to record each batch's (trained, processed, padded) token counts."""

    def __init__(self, inner, eos_id: int, log: list[tuple[int, int, int]]):
        self.inner, self.eos_id, self.log = inner, eos_id, log

    def __call__(self, examples):
        batch = self.inner(examples)
        mask = batch["attention_mask"]
        trained = sum(
            pair_tokens(e["chosen_ids"], e["rejected_ids"], self.eos_id) for e in examples
        )
        self.log.append((trained, int(mask.sum()), mask.numel() - int(mask.sum())))
        return batch


def dpo_config(settings: DpoSettings, out_dir: Path, tuned: bool):
    """The ``DPOConfig`` of :data:`VARIANTS` (see the module docstring)."""
    import torch
    from trl import DPOConfig

    from tunesmith.precision import cpu_has_native_bf16

    common = trainer_args(settings, out_dir) | {"beta": settings.beta}
    cuda = torch.cuda.is_available()
    if not tuned:
        return DPOConfig(**common, bf16=cuda)
    return DPOConfig(
        **common,
        bf16=cuda or cpu_has_native_bf16(),
        use_cpu=not cuda,
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
    )


def run_trl(
    settings: DpoSettings, data: dict[str, str], workdir: Path, tuned: bool
) -> dict[str, Any]:
    """TRL ``DPOTrainer`` on the already loaded model and an in-memory dataset (offline)."""
    from trl import DPOTrainer

    t0 = time.perf_counter()
    args = dpo_config(settings, workdir / "trl", tuned)
    clock, losses, counts = StepClock(), [], []
    trainer, tok = build_trainer(DPOTrainer, settings.model, args, data["pairs"], clock, losses)
    trainer.data_collator = _CountingCollator(trainer.data_collator, tok.eos_token_id, counts)
    setup_s = time.perf_counter() - t0
    trainer.train()
    peak = peak_rss_bytes()
    row = finish_row(
        "trl-tuned" if tuned else "trl-default",
        precision="bf16" if trainer.accelerator.mixed_precision == "bf16" else "fp32",
        checkpointing=bool(args.gradient_checkpointing),
        clock=clock,
        per_step=counts[: settings.steps],
        params=None,
        losses=losses,
        peak_rss=peak,
        eval_value=float("nan"),
        setup_s=setup_s,
    )
    return row | {"reference": "precomputed" if tuned else "adapter off, live"}
