"""``tunesmith train``: a recipe of named steps over a :class:`~tunesmith.rundir.RunDir`.

preflight -> claim the run directory -> prepare data -> build model -> (swap the run into
place) -> evaluate base -> fit -> save -> evaluate adapted -> report. Each step is a library
function (:mod:`tunesmith.train.steps`) that compare, bench and the server call too; this
module only puts them in order, with the run directory's lock and the distributed hand-offs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import TrainConfig, make_config, resolve_lr
from tunesmith.errors import step
from tunesmith.rundir import RunDir
from tunesmith.track.session import Trackers, check_installed
from tunesmith.track.session import for_run as track_run
from tunesmith.trackers import parse_report_to
from tunesmith.train.claim import Claim, claim_for_run
from tunesmith.train.dist_steps import start_distributed, whole_model_on_main
from tunesmith.train.pref_steps import PreferenceRun, prepare_preference_data, tokenize_preferences
from tunesmith.train.preflight import Preflight, preflight, preflight_resume
from tunesmith.train.steps import (
    BuiltModel,
    DataSplit,
    build_model,
    evaluate_adapted,
    evaluate_base,
    format_metrics,
    load_base_side,
    loop_settings,
    prepare_data,
    save_result,
    timed,
    write_report,
)


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


# -- the workflow ---------------------------------------------------------------------------
@dataclass
class _Session:
    """What every step of one run shares: its config, its processes, its voice and clocks."""

    cfg: TrainConfig
    pre: Preflight
    dist: Any  # distributed.DistContext
    claimed: Claim | None  # rank 0's lock on the run directory (None on other ranks)
    say: Callable[[str], None]
    progress_factory: Callable[[int], Any] | None
    t_start: float
    timings: dict[str, float] = field(default_factory=dict)
    trackers: Any = None  # track.session.Trackers
    stop_when: Callable[[list[float]], str | None] | None = None  # TrainLoop's stop predicate


def run_training(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    say: Callable[[str], None] = print,
    progress_factory: Callable[[int], Any] | None = None,
    stop_when: Callable[[list[float]], str | None] | None = None,
) -> RunResult:
    """Run a whole fine-tune as configured; see the module docstring for the steps.

    ``stop_when`` (the step losses so far -> a reason, or None) may end training early with
    :class:`~tunesmith.train.signals.Diverged`; compare's learning-rate search passes one.
    """
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train import guard

    t_start = time.perf_counter()
    cfg = resolve_lr(cfg)
    resumed = RunDir(resume) if resume else None
    # Launched by torchrun / accelerate launch: join the process group; rank 0 writes files.
    dist = start_distributed(resumed.config if resumed else cfg)
    if not dist.is_main:
        say, progress_factory = _silent, None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    guard.cap_device_memory(dist.device)
    torch.manual_seed(cfg.seed)

    with step("checking the config"):
        pre = preflight_resume(resumed, dist, say) if resumed else preflight(cfg, dist)
        check_installed(parse_report_to(pre.cfg.report_to))
    # Data first: a bad file should fail before minutes of model loading.
    with step("loading the tokenizer"):
        tokenizer = load_tokenizer(pre.source, trust_remote_code=pre.cfg.trust_remote_code)
        ensure_chat_template(tokenizer, pre.cfg.template)
    claimed = claim_for_run(pre, resumed, new_run_dir(pre.cfg)) if dist.is_main else None
    s = _Session(pre.cfg, pre, dist, claimed, say, progress_factory, t_start, stop_when=stop_when)
    try:
        staging, target = dist.broadcast(
            (str(claimed.run.path), str(claimed.target)) if claimed is not None else None
        )
        # Until the swap below nothing of value exists: bad input or a stop leaves no trace.
        try:
            data, built, examples = _inputs(s, RunDir(staging), tokenizer)
        except BaseException:
            if claimed is not None:
                claimed.release() if resumed else claimed.abandon()
            raise
        dist.barrier()  # every rank has read the data from the staging directory
        if claimed is not None:
            claimed.commit()
        dist.barrier()
        run = RunDir(target)
        with step("starting the trackers"):
            s.trackers = (
                track_run(s.cfg, run, pre.resume_from, resumed=bool(resumed), say=say)
                if dist.is_main
                else Trackers({}, say)
            )
        try:
            with built.fast_paths.training():  # a watch that gave cores away gives them back
                return _train_and_save(s, run, data, built, examples)
        finally:
            s.trackers.finish()
    finally:
        if claimed is not None:
            claimed.release()


def _inputs(s: _Session, run: RunDir, tokenizer):
    """Prepare the data, build the model and tokenize: every input the run needs."""
    from tunesmith.data.dataset import tokenize_conversations

    cfg, pre, dist = s.cfg, s.pre, s.dist
    with timed(s.timings, "data_s"), dist.main_first(), step("preparing the data"):
        reuse = pre.resume_from is not None or not dist.is_main
        if cfg.objective != "sft":
            data = prepare_preference_data(cfg, run, reuse=reuse)
        else:
            data = prepare_data(cfg, run, tokenizer, reuse=reuse)
    s.say(data.summary())
    with timed(s.timings, "load_s"), step("loading the model"):
        built = build_model(cfg, dist.device, checkpointing=pre.checkpointing)
    trainable, total = built.params
    s.say(
        f"model: {built.source.display}, method {cfg.method}, precision {built.precision}, "
        f"trainable {trainable:,} / {total:,} ({100 * trainable / total:.3f}%)"
    )
    if cfg.objective != "sft":
        with step("tokenizing the pairs"):
            train_ex = tokenize_preferences(built.tokenizer, data.train, cfg.seq_len)
            eval_ex = tokenize_preferences(built.tokenizer, data.eval, cfg.seq_len)
        return data, built, (train_ex, eval_ex)
    with step("tokenizing the data"):
        tok = built.tokenizer
        train_ex = tokenize_conversations(
            tok, data.train, seq_len=cfg.seq_len, train_on_prompt=cfg.train_on_prompt
        )
        eval_ex = tokenize_conversations(tok, data.eval, seq_len=cfg.seq_len) if data.eval else []
        if cfg.packing:
            from tunesmith.data.packing import check_packable, pack_examples

            check_packable(built.model, kv_prefix=built.spec.kv_prefix)
            n_examples = len(train_ex)
            # From here on a training "example" is a packed row of up to seq-len tokens.
            train_ex = pack_examples(train_ex, cfg.seq_len)
            s.say(
                f"packing: {n_examples} examples -> {len(train_ex)} rows of <= {cfg.seq_len} tokens"
            )
    return data, built, (train_ex, eval_ex)


def _train_and_save(s: _Session, run: RunDir, data: DataSplit, built: BuiltModel, examples):
    """Evaluate the base, fit, save, evaluate the result and write the report."""
    from tunesmith.report.metrics import MetricsLog
    from tunesmith.train.loop import TrainLoop, steps_for_epochs

    cfg, pre, dist, say = s.cfg, s.pre, s.dist, s.say
    train_ex, eval_ex = examples
    model, tokenizer = built.model, built.tokenizer
    trainable, total = built.params
    max_steps = cfg.max_steps or steps_for_epochs(
        len(train_ex), cfg.batch_size * dist.world_size, cfg.grad_accum, cfg.epochs
    )
    pref = (
        PreferenceRun.for_run(cfg, built, train_ex, eval_ex, run)
        if cfg.objective != "sft"
        else None
    )
    evals = data.eval_conversations
    base_side = None
    if evals and not cfg.skip_base_eval and pre.resume_from is None and dist.is_main:
        say(f"evaluating the base model on {len(evals)} held-out examples ...")
        with timed(s.timings, "base_eval_s"), step("evaluating the base model"):
            base_side = evaluate_base(model, tokenizer, evals, cfg, run)
            if pref is not None:
                pref.add_base_metrics(model, base_side, run)
        reused = " (an identical earlier evaluation, from the cache)" if base_side.cached else ""
        say(f"base{reused}: " + format_metrics(base_side.metrics))
    elif pre.resume_from is not None:
        base_side = load_base_side(run)

    dist.barrier()  # the other ranks wait for rank 0's base evaluation
    loop = TrainLoop(
        model, train_ex, tokenizer.pad_token_id, loop_settings(cfg, built, max_steps), run.path,
        dist.device, on_log=s.trackers.log, say=say, dist=dist, fast_paths=built.fast_paths,
        stop_when=s.stop_when,
        **(pref.loop_inputs(train_ex, tokenizer.pad_token_id) if pref else {}),
    )  # fmt: skip
    per_step = cfg.batch_size * cfg.grad_accum * dist.world_size
    say(
        f"training {max_steps} steps x {per_step} examples ({len(train_ex)} train examples)"
        + (f" on {dist.world_size} processes ({dist.mode})" if dist.active else "")
    )
    progress = s.progress_factory(max_steps) if s.progress_factory else None
    try:
        with timed(s.timings, "train_s"), step("training"):
            result = loop.train(resume_from=pre.resume_from, progress=progress)
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    if eval_ex and pref is None:
        with step("computing the eval loss"):
            loss = loop.eval_loss(eval_ex)
        if dist.is_main:
            eval_row = {"step": max_steps, "eval_loss": round(loss, 6)}
            MetricsLog(run.metrics_path, resume_step=max_steps).write(eval_row)
            s.trackers.log(eval_row)
    done = RunResult(
        run.path, max_steps, result.losses, None, trainable, total, result.elapsed_s,
        result.tokens_per_s, s.timings,
    )  # fmt: skip
    if dist.active:
        # Rank 0 saves and evaluates a whole model; the other ranks are done.
        model = whole_model_on_main(model, loop, dist, cfg, dist.device)
        del loop
        if not dist.is_main:
            dist.close()
            return done
    if s.claimed is not None:
        s.claimed.check_in_place()
    with step("saving the result"):
        final_dir = save_result(model, tokenizer, run, cfg, built.spec)
    if evals:
        say("evaluating the fine-tuned model ...")
        with timed(s.timings, "eval_s"), step("evaluating the fine-tuned model"):
            done.eval = evaluate_adapted(
                model, tokenizer, evals, base_side, cfg, run, built.source.display, final_dir
            )
            if pref is not None:
                pref.add_adapted_metrics(model, done.eval, run)
    write_report(run, say)
    s.trackers.log_eval(done.eval)
    s.trackers.log_report(run)
    if s.claimed is not None:
        s.claimed.check_in_place()
    s.timings["total_s"] = time.perf_counter() - s.t_start
    dist.close()
    return done


def _silent(message: str) -> None:
    """``say`` on ranks other than 0: one voice per run."""


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
        values = config.model_dump(exclude_unset=True)  # unset fields keep their defaults' rules
    elif config:
        values = dict(config)
    values.update(kwargs)
    cfg = make_config(values)
    return run_training(cfg, resume=resume, say=say)
