"""The training loop: setup -> train -> checkpoint, on top of accelerate for device placement.

Which examples a step sees, and as which forward passes, is :class:`StepBatches`
(``step_batches.py``): derived from the step number, so resuming at step N replays nothing and
skips nothing. The loss of a step is the sum of token losses over all its micro-batches
divided by the step's total trained tokens, so gradient accumulation does not reweight
examples by micro-batch length.

Faults cost a retry, not the run: an out-of-memory step is redone with each micro-batch split
in two (twice the accumulation, the same examples, the same effective batch); a non-finite
loss or gradient stops the run (keeping the last checkpoint) or, with ``on_nan="skip"``,
drops that one update; SIGINT/SIGTERM save a checkpoint at the next step boundary; a reason
from ``stop_when(losses)``, asked after every step, ends the run (:class:`Diverged`).

The CPU fast paths reach the loop only through their handle
(:class:`tunesmith.train.fastpath.FastPaths`): how a micro-batch is cut into passes, the loss's
cross-entropy and what to do after a step. Without one the loop runs the reference path.
A preference objective brings its own ``batches`` and ``loss_fn``; a micro-batch's
``loss_units`` are what a step's loss averages over (SFT: tokens; DPO and kin: examples).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tunesmith.adamw import adamw_kernel
from tunesmith.data.dataset import Batch, collate
from tunesmith.data.render import Rendered
from tunesmith.distributed import DistContext
from tunesmith.errors import WorkFailed
from tunesmith.loss import fast_path_eligible, loss_sum
from tunesmith.report.metrics import MetricsLog
from tunesmith.train import checkpoint as ckpt
from tunesmith.train import grad_clip, guard
from tunesmith.train.fastpath import FastPaths
from tunesmith.train.memory_stats import peak_memory_bytes, reset_peak_memory
from tunesmith.train.settings import LoopSettings, TrainResult, steps_for_epochs
from tunesmith.train.signals import Diverged, Interrupted, StopRequest
from tunesmith.train.speed import compute_context, tuner_layers
from tunesmith.train.step_batches import StepBatches

# Importers of the loop's inputs and outputs find them here too.
__all__ = ["Interrupted", "LoopSettings", "TrainLoop", "TrainResult", "steps_for_epochs"]


class TrainLoop:
    """Trains the parameters of ``model`` that require grad on pre-tokenized examples."""

    def __init__(
        self,
        model,
        examples: list[Rendered],
        pad_id: int,
        settings: LoopSettings,
        run_dir: Path,
        device: torch.device,
        on_log: Callable[[dict], None] | None = None,
        say: Callable[[str], None] | None = None,
        dist: DistContext | None = None,
        fast_paths: FastPaths | None = None,
        batches: StepBatches | None = None,
        loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] | None = None,  # sum over units
        stop_when: Callable[[list[float]], str | None] | None = None,
    ):
        self.model = model
        # The CPU fast paths' policies (passes, cross-entropy, heap trimming); the default
        # handle is the reference path (train/fastpath/).
        self.fast_paths = fast_paths or FastPaths()
        # Several processes (torchrun): each rank trains on its slice of every planned
        # micro-batch through `self.forward` (DDP/FSDP); rank 0 alone writes files.
        self.dist = dist or DistContext()
        self.examples = examples
        self.pad_id = pad_id
        self.s = settings
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.on_log = on_log
        self.say = say or (lambda message: None)  # announces retries and skipped steps
        self.fast = settings.fast_loss and fast_path_eligible(model)
        self.forward = None
        self._layers = tuner_layers(model) if settings.keep_input_dtype else None  # found once
        # DeepSpeed's engine reduces, clips and updates (train/deepspeed_engine.py).
        self.engine = None
        if self.dist.active:
            from tunesmith.distributed.wrap import wrap

            self.forward = wrap(model, self.dist, self.fast)  # before the optimizer: FSDP
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise WorkFailed("the method left no trainable parameter")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=settings.lr, weight_decay=settings.weight_decay,
            **adamw_kernel(device.type, self.dist.active),
        )  # fmt: skip
        self._clip = grad_clip.clipper(device, self.dist.active)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            {"constant": "constant_with_warmup"}.get(settings.lr_scheduler, settings.lr_scheduler),
            self.optimizer,
            num_warmup_steps=int(settings.warmup_ratio * settings.max_steps),
            num_training_steps=settings.max_steps,
        )
        if self.dist.mode == "deepspeed":
            from tunesmith.train import deepspeed_engine

            self.engine = deepspeed_engine.initialize(
                self.forward, self.optimizer, self.dist.engine_config
            )
            self.forward = self.engine
        self.loss_fn = loss_fn
        self.stop_when = stop_when  # losses so far -> why to stop now, or None
        self.batches = batches or StepBatches(
            examples,
            pad_id,
            batch_size=settings.batch_size,
            grad_accum=settings.grad_accum,
            seed=settings.seed,
            group_by_length=settings.group_by_length,
            dist=self.dist,
            policy=self.fast_paths.pass_policy,
        )
        self.stop = StopRequest()
        # Each planned micro-batch runs as `split` smaller ones; doubled after an OOM.
        self.split = 1

    @property
    def micro_batch_size(self) -> int:
        return math.ceil(self.s.batch_size / self.split)

    @property
    def accumulation(self) -> int:
        return self.s.grad_accum * self.split

    # -- data --------------------------------------------------------------------------
    def micro_batches(self, step: int, split: int = 1) -> list[Batch]:
        """The forward passes of optimizer step ``step`` (0-based); see :class:`StepBatches`."""
        return self.batches.of_step(step, split)

    def _compute_context(self):
        s = self.s
        return compute_context(
            self.model, self.device, s.autocast_dtype, s.keep_input_dtype, self._layers
        )

    # -- the loop ----------------------------------------------------------------------
    def train(
        self, resume_from: Path | None = None, progress=None, stop_after: int | None = None
    ) -> TrainResult:
        """Run to ``max_steps`` (or ``stop_after`` steps, to simulate a crash in tests)."""
        start_step = 0
        result = TrainResult(steps=self.s.max_steps)
        if resume_from is not None:
            state = self._load(resume_from)
            start_step = state["step"]
            result.losses = list(state.get("losses", []))
            result.trained_tokens = state.get("trained_tokens", 0)
            result.skipped_steps = state.get("skipped_steps", 0)
            result.examples_seen = state.get("examples_seen", 0)
            self.split = state.get("micro_split", 1)
            result.resumed_from = start_step
        resume_step = start_step if resume_from is not None else None
        log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step) if self.dist.is_main else None
        self.model.train()
        reset_peak_memory(self.device)  # the logged peak is this run's training, not the process's
        t0 = time.perf_counter()
        elapsed_before = state.get("elapsed_s", 0.0) if resume_from is not None else 0.0
        window_tokens, window_t = 0, time.perf_counter()
        # fast_paths.training(): e.g. a shared machine's cores given back when the loop stops
        with self.stop.catching(), self.fast_paths.training():
            for step in range(start_step, min(self.s.max_steps, stop_after or self.s.max_steps)):
                loss, n_tok, grad_norm, n_ex = self._step_with_retry(step, result)
                self.fast_paths.after_step()  # e.g. freed activations back to the OS (CPU)
                result.losses.append(loss)
                result.trained_tokens += n_tok
                result.examples_seen += n_ex
                result.skipped_steps += not math.isfinite(loss)
                window_tokens += n_tok
                done = step + 1
                if done % self.s.logging_steps == 0 or done == self.s.max_steps:
                    now = time.perf_counter()
                    row = self._metrics_row(
                        done, result, grad_norm, window_tokens / max(now - window_t, 1e-9)
                    )
                    row["elapsed_s"] = round(elapsed_before + now - t0, 3)
                    if log is not None:
                        log.write(row)
                    if self.on_log:
                        self.on_log(row)
                    window_tokens, window_t = 0, now
                if progress is not None:
                    progress(done, loss)
                last = done == self.s.max_steps
                # A signal may reach one rank only: all stop at the same step boundary. The
                # agreed answer goes to its own name: a signal that lands during the all-reduce
                # sets ``requested`` afterwards, and overwriting it would lose that signal.
                stopping = self.dist.any(self.stop.requested)
                if stopping or (self.s.save_steps and done % self.s.save_steps == 0 and not last):
                    self.save(done, result, elapsed_before + time.perf_counter() - t0)
                if self.stop_when is not None and (why := self.stop_when(result.losses)):
                    raise Diverged(f"stopped at step {done}: {why}")
                if stopping:
                    raise Interrupted(
                        f"stopped at step {done}; checkpoint saved. Continue with: "
                        f"tunesmith train --resume {self.run_dir}"
                    )
        result.elapsed_s = elapsed_before + time.perf_counter() - t0
        return result

    def _metrics_row(
        self, done: int, result: TrainResult, grad_norm: float, tokens_per_s: float
    ) -> dict:
        """A metrics.jsonl row; the loss averages the finite losses since the last row."""
        window = [x for x in result.losses[-self.s.logging_steps :] if math.isfinite(x)]
        examples_per_step = self.s.grad_accum * self.s.batch_size * self.dist.world_size
        row = {
            "step": done,
            "epoch": round(done * examples_per_step / len(self.examples), 4),
            "loss": round(sum(window) / len(window), 6) if window else None,
            "grad_norm": round(grad_norm, 6) if math.isfinite(grad_norm) else None,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": round(tokens_per_s, 2),
            "peak_mem_bytes": peak_memory_bytes(self.device),
        }
        if self.s.on_nan == "skip":
            row["skipped_steps"] = result.skipped_steps
        if self.split > 1:  # after an OOM retry: the shape the run now has
            row["micro_batch"] = self.micro_batch_size
            row["grad_accum"] = self.accumulation
        return row

    def _step_with_retry(self, step: int, result: TrainResult) -> tuple[float, int, float, int]:
        """Run step ``step``; on out-of-memory, halve the micro-batch and redo the same step."""
        while True:
            try:
                return self._step(step)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not guard.is_oom(exc):
                    raise
                if self.dist.active:  # every rank would have to redo the step in step
                    raise WorkFailed(
                        f"out of memory at step {step + 1} on rank {self.dist.rank}; lower "
                        "--batch-size or --seq-len, or shard with --distributed fsdp"
                    ) from exc
                if self.micro_batch_size == 1:
                    raise WorkFailed(
                        f"out of memory at step {step + 1} even with micro-batch 1; lower "
                        "--seq-len or use a smaller model / --method qlora (see tunesmith plan)"
                    ) from exc
            # Outside the except block, so the traceback's frames (and their tensors) are gone.
            self.optimizer.zero_grad(set_to_none=True)
            guard.free_memory(self.device)
            self.split *= 2
            result.oom_retries += 1
            self.say(
                f"out of memory at step {step + 1}: redoing it as micro-batch "
                f"{self.micro_batch_size} x accumulation {self.accumulation} (same effective batch)"
            )

    def _step(self, step: int) -> tuple[float, int, float, int]:
        """One optimizer step: (loss, trained tokens, gradient norm, examples)."""
        batches = [b.to(self.device) for b in self.micro_batches(step, self.split)]
        total = sum(b.num_trained for b in batches)
        n_examples = sum(b.num_examples for b in batches)
        units = sum(b.loss_units for b in batches)  # what the loss averages over
        if self.dist.active:
            from tunesmith.distributed.batches import align_micro_batches

            # Same number of passes on every rank (FSDP gathers in each); global counts.
            batches = align_micro_batches(batches, self.dist)
            total, n_examples, units = (int(x) for x in self.dist.sum(total, n_examples, units))
        # DDP/FSDP average gradients over ranks; the loss is a sum over the global step.
        scale = self.dist.world_size
        loss_value = 0.0
        for i, b in enumerate(batches):
            with self._gradient_sync(i == len(batches) - 1):
                with self._compute_context():
                    loss = self._loss_sum(b) / max(units, 1)
                self._backward(loss * scale if scale > 1 else loss)
            loss_value += float(loss.detach())
        if self.dist.active:
            (loss_value,) = self.dist.sum(loss_value)
        if self.engine is not None:  # DeepSpeed clips, updates, and drops a non-finite update
            from tunesmith.train.deepspeed_engine import step as engine_step

            grad_norm = engine_step(self.engine)
        else:
            grad_norm = _as_float(self._clip(self.params, self.s.max_grad_norm))
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            what = (
                f"loss {loss_value}"
                if not math.isfinite(loss_value)
                else f"gradient norm {grad_norm}"
            )
            if self.s.on_nan != "skip":
                raise WorkFailed(
                    f"training diverged at step {step + 1}: {what}. The last saved checkpoint is "
                    "kept; lower --lr, use --precision fp32, or pass --on-nan skip to drop such steps"
                )
            # Drop this update only; the schedule still advances so step N keeps step N's lr.
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.say(f"step {step + 1}: {what}; update skipped (--on-nan skip)")
            return math.nan, total, grad_norm, n_examples
        if self.engine is None:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, total, grad_norm, n_examples

    def _backward(self, loss: torch.Tensor) -> None:
        if self.engine is None:
            loss.backward()
            return
        # The loss is already over the step's global tokens: no 1/accumulation rescale.
        self.engine.backward(loss, scale_wrt_gas=False)

    def _loss_sum(self, b: Batch) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, b)
        if self.forward is None:
            return loss_sum(self.model, b, fast=self.fast, head_loss=self.fast_paths.head_loss)
        if b.num_trained == 0:
            # A stand-in pass (rank_slice): every rank must run it, but it counts nothing. Any
            # valid labels, times 0, since a mean over no token (reference path) is NaN.
            return 0.0 * self.forward(b.input_ids, b.input_ids, b.attention_mask, b.position_ids)
        return self.forward(b.input_ids, b.labels, b.attention_mask, b.position_ids)

    def _gradient_sync(self, sync: bool):
        if self.forward is None:
            return contextlib.nullcontext()
        from tunesmith.distributed.wrap import gradient_sync

        return gradient_sync(self.forward, sync)

    def save(self, step: int, result: TrainResult, elapsed_s: float) -> Path:
        extra = {
            "losses": result.losses,
            "trained_tokens": result.trained_tokens,
            "elapsed_s": elapsed_s,
            "skipped_steps": result.skipped_steps,
            "examples_seen": result.examples_seen,
            "micro_split": self.split,
            "world_size": self.dist.world_size,
        }
        root = self.run_dir / "checkpoints"
        if self.engine is not None:  # DeepSpeed's sharded format
            from tunesmith.train import deepspeed_engine

            return deepspeed_engine.save_checkpoint(
                root, step, self.engine, self.scheduler, extra, self.dist
            )
        return ckpt.save_checkpoint(
            root,
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            extra,
            ctx=self.dist if self.dist.active else None,
        )

    def _load(self, path: Path) -> dict:
        if self.engine is not None:
            from tunesmith.train import deepspeed_engine

            return deepspeed_engine.load_checkpoint(
                path, self.engine, self.scheduler, self.dist.rank
            )
        return ckpt.load_checkpoint(
            path, self.model, self.optimizer, self.scheduler, rank=self.dist.rank
        )

    @torch.no_grad()
    def eval_loss(self, examples: list[Rendered], batch_size: int = 16) -> float:
        """Mean token loss on held-out examples (one micro-batch of logits at a time)."""
        self.model.eval()
        total, n = 0.0, 0
        for i in range(0, len(examples), batch_size):
            b = collate(examples[i : i + batch_size], self.pad_id).to(self.device)
            # distributed: every rank computes the same sum (FSDP gathers in step)
            with self._compute_context():
                total += float(self._loss_sum(b))
            n += b.num_trained
        self.model.train()
        return total / max(n, 1)


def _as_float(x: torch.Tensor) -> float:
    """A scalar tensor as a float; FSDP's gradient norm is a DTensor."""
    from tunesmith.distributed.wrap import local_value

    return local_value(x)
