"""The ``tunesmith`` variant of the DPO bench: ``tunesmith train --objective dpo``'s steps, timed.

The same library calls as :func:`tunesmith.train.run.run_training` on a preference run, in
its order: the config, the ``build_model`` step (``--precision auto``: a bf16-stored frozen
base where the hardware has native bf16), the tokenized pairs, the objective's reference
(:class:`~tunesmith.train.pref_steps.PreferenceRun`: the base with the adapter switched off,
scored live in every step) and the loop. What it leaves out (the memory plan, evaluation,
the run directory's files) is not timed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunesmith.bench.dpo.data import read_pairs
from tunesmith.bench.dpo.measure import DpoSettings, pair_tokens
from tunesmith.bench.train.measure import (
    LORA,
    StepClock,
    adapter_config,
    finish_row,
    peak_rss_bytes,
)


def run_tunesmith(settings: DpoSettings, data: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Train ``settings.steps`` DPO steps as ``tunesmith train`` does; returns the run's row."""
    import torch

    from tunesmith.config import make_config
    from tunesmith.data.packing import packed_scoring
    from tunesmith.objectives.packed_rows import pack_sequences
    from tunesmith.precision import default_device
    from tunesmith.rundir import RunDir
    from tunesmith.train.loop import TrainLoop
    from tunesmith.train.pref_steps import PreferenceRun, tokenize_preferences
    from tunesmith.train.steps import build_model, loop_settings

    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    cfg = make_config(
        {
            "model": settings.model,
            **adapter_config(LORA),
            "objective": "dpo",
            "beta": settings.beta,
            "lr": settings.lr,
            "lr_scheduler": "cosine",
            "warmup_ratio": settings.warmup_ratio,
            "batch_size": settings.batch_size,
            "seq_len": settings.seq_len,
            "seed": settings.seed,
        }
    )
    device = default_device()
    built = build_model(cfg, device)
    tok = built.tokenizer
    pairs = tokenize_preferences(tok, read_pairs(data["pairs"]), cfg.seq_len)
    run = RunDir(workdir / "run")
    pref = PreferenceRun.for_run(cfg, built, pairs, [], run)
    loop = TrainLoop(
        built.model, pairs, tok.pad_token_id, loop_settings(cfg, built, settings.steps),
        run.path, device, fast_paths=built.fast_paths,
        **pref.loop_inputs(pairs, tok.pad_token_id),
    )  # fmt: skip
    # The tokens the forward passes see: one packed row per micro-batch where the fast paths
    # pack them (each prompt once, padded to a length bucket), else the padded rows.
    packed = packed_scoring(built.model) is not None
    clock = StepClock()
    setup_s = time.perf_counter() - t0
    # The loop restarts the resident high-water mark (its own peak is training's); the bench
    # compares whole processes with TRL's, so the loading peak before training counts too.
    before = peak_rss_bytes()
    result = loop.train(progress=lambda done, loss: clock.tick())
    peak = max(before, peak_rss_bytes())
    per_step = []
    for step in range(settings.steps):  # the batch plan is a pure function of the step
        passes = loop.micro_batches(step)
        masks = [
            pack_sequences(mb.rows).attention_mask if packed else mb.rows.attention_mask
            for mb in passes
        ]
        per_step.append(
            (
                sum(
                    pair_tokens(pairs[j].chosen, pairs[j].rejected, tok.eos_token_id)
                    for mb in passes
                    for j in mb.indices
                ),
                sum(int(m.sum()) for m in masks),
                sum(m.numel() - int(m.sum()) for m in masks),
            )
        )
    row = finish_row(
        "tunesmith",
        precision=built.precision,
        checkpointing=False,
        clock=clock,
        per_step=per_step,
        params=None,
        losses=result.losses,
        peak_rss=peak,
        eval_value=float("nan"),
        setup_s=setup_s,
    )
    return row | {"reference": "adapter off, live"}
