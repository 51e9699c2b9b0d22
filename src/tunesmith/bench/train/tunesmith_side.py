"""The ``tunesmith`` variant of the training bench: the library's own training steps, timed.

:class:`tunesmith.train.loop.TrainLoop` as ``tunesmith train`` drives it (``--precision
auto``: a bf16-stored frozen base where the hardware has native bf16). The set-up is the
train workflow's own calls, made in one place (:func:`prepare_loop`); this module only adds
the clock and the counts around them, and, after the eval loss, the shape-matched limit of
the timed steps (:func:`step_limit`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

from tunesmith.bench.train.data import read_conversations
from tunesmith.bench.train.measure import (
    ADAPTERS,
    BenchSettings,
    StepClock,
    adapter_config,
    eval_loss,
    finish_row,
    limit_fields,
    linear_params,
    peak_rss_bytes,
)


class PreparedLoop(NamedTuple):
    """A loop ready to train, with the model, tokenizer and precision it was made for."""

    loop: Any  # tunesmith.train.loop.TrainLoop
    model: Any
    tokenizer: Any
    precision: str
    autocast: Any  # torch.dtype | None


def prepare_loop(settings: BenchSettings, train_path: str, workdir: Path, device) -> PreparedLoop:
    """What ``tunesmith train`` does from the config to a ready loop, with the bench's settings.

    The same library calls as :func:`tunesmith.train.run.run_training`, in its order: the
    config (``make_config``), the ``build_model`` step (precision policy, attention kernel, CPU
    fast paths), the tokenized examples, and the ``loop_settings`` step. What it leaves out
    (the memory plan, base evaluation, the run directory's files) is not timed.
    """
    import torch

    from tunesmith.config import make_config
    from tunesmith.data.dataset import tokenize_conversations
    from tunesmith.train.loop import TrainLoop
    from tunesmith.train.steps import build_model, loop_settings

    torch.manual_seed(settings.seed)
    cfg = make_config(
        {
            "model": settings.model,
            **adapter_config(ADAPTERS[settings.adapter]),
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "seq_len": settings.seq_len,
            "seed": settings.seed,
            "warmup_ratio": settings.warmup_ratio,
            "threads": settings.threads or None,  # the bench's --threads, as --threads is
        }
    )
    built = build_model(cfg, device)
    model, tok, precision, autocast = built.model, built.tokenizer, built.precision, built.autocast
    examples = tokenize_conversations(tok, read_conversations(train_path), seq_len=cfg.seq_len)
    loop = TrainLoop(
        model, examples, tok.pad_token_id, loop_settings(cfg, built, settings.steps),
        workdir / "run", device, fast_paths=built.fast_paths,
    )  # fmt: skip
    return PreparedLoop(loop, model, tok, precision, autocast)


def step_limit(loop, steps: range):
    """The shape-matched limit of ``steps``: their GEMMs recorded from the loop's own steps run
    again (outside the clock, after the run's results are taken), then replayed alone, each
    distinct GEMM warm and all of them in the steps' order.

    Returns:
        A :class:`tunesmith.bench.train.gemm_limit.ShapeLimit` over all of ``steps``.
    """
    import dataclasses
    from collections import Counter

    from tunesmith.bench.train.gemm_limit import record_calls, replay, replay_in_order
    from tunesmith.train.fastpath import row_split

    loop.model.train()  # as during training (the eval loss left it in eval mode)
    calls = []
    for step in steps:
        # The loop's own step (passes, loss, backward, update), so the record follows it; its
        # products in torch's ops, which the recorder sees (the AMX kernel's are not dispatched).
        with row_split.through_torch():
            calls += record_calls(lambda step=step: loop._step(step))
    limit = replay(Counter(c.gemm for c in calls), device=loop.device)
    in_order = replay_in_order(calls, device=loop.device)
    return dataclasses.replace(limit, in_order_seconds=in_order)


def run_tunesmith(settings: BenchSettings, data: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Train ``settings.steps`` steps with :func:`prepare_loop`'s loop; returns the run's row."""
    from tunesmith.precision import default_device
    from tunesmith.train.fastpath import kernel_choice, native

    t0 = time.perf_counter()
    ready = prepare_loop(settings, data["train_messages"], workdir, default_device())
    clock = StepClock()
    setup_s = time.perf_counter() - t0
    # The loop restarts the resident high-water mark (its own peak is training's); the bench
    # compares whole processes with TRL's, so the loading peak before training counts too.
    before = peak_rss_bytes()
    result = ready.loop.train(progress=lambda done, loss: clock.tick())
    peak = max(before, peak_rss_bytes())
    per_step = []
    for step in range(settings.steps):  # the batch plan is a pure function of the step
        passes = ready.loop.micro_batches(step)
        per_step.append(
            (
                sum(b.num_trained for b in passes),
                sum(b.num_tokens for b in passes),
                sum(b.input_ids.numel() - b.num_tokens for b in passes),
            )
        )
    held_out = read_conversations(data["eval_messages"])[: settings.eval_limit]
    row = finish_row(
        "tunesmith",
        precision=ready.precision,
        checkpointing=False,
        clock=clock,
        per_step=per_step,
        params=linear_params(ready.model),
        losses=result.losses,
        peak_rss=peak,
        eval_value=eval_loss(ready.model, ready.tokenizer, held_out, settings, ready.autocast),
        setup_s=setup_s,
    )
    limit = step_limit(ready.loop, range(1, len(clock.ends)))  # the timed steps
    row.update(limit_fields(limit, row["timed_steps"], row["wall_s"]))
    row["cpu_kernels"] = native.described()  # a round without them is another workload
    if (paths := kernel_choice.summary()) is not None:  # which of a kernel's paths ran here
        row["kernel_paths"] = paths
    return row
