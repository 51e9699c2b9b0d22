"""``compare --lr-search``: a small learning-rate search per method, scored on validation data.

The protocol, in order:

1. The data is cleaned once into ``OUTPUT/search/data/`` (``train.jsonl``, and the test set
   ``train.eval.jsonl``: the user's ``--eval-data`` or a held-out share, as ``train`` makes it).
2. A seeded share of the cleaned training examples is set aside as the validation split
   (:mod:`tunesmith.compare.split`): ``OUTPUT/search/fit.jsonl`` and ``validation.jsonl``.
3. Each method trains once per rate of its grid (:mod:`tunesmith.compare.grid`) with an
   ordinary :func:`~tunesmith.train.run.run_training` under ``OUTPUT/<method>/lr-<rate>/``, on
   the fit examples, scored on the validation ones (its ``eval.json``). Same examples, steps and
   seed for every method and rate; a diverging rate is stopped early, a failed one kept as such.
   While the best rate so far is the highest or lowest tried, one more rate past that edge is
   tried (:func:`~tunesmith.compare.grid.next_rate`), at most ``extensions`` times.
4. Per method, the best validation task metric wins; among rates within its standard error
   (at least one example) of it, the lower validation loss (:func:`~.winners.pick_best`). That
   run never saw the validation or the test examples, so its saved model is evaluated on the
   test set as it is (``test_eval.json`` in its directory): no retraining.
5. The base model is evaluated once on the test set, its general-text perplexity taken from
   the validation runs (the same model and text).

Every finished (method, rate) is recorded in ``OUTPUT/search/state.json`` as soon as it ends,
so a compare run again with the same output after an interruption trains only what is missing.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tunesmith.atomic import write_json
from tunesmith.compare.grid import DEFAULT_GRID, EDGE_EXTENSIONS, diverging, lr_grid, next_rate
from tunesmith.compare.lr import lr_for
from tunesmith.compare.rows import MethodRow, task_metric_name
from tunesmith.compare.split import ValidationSplit, split_validation
from tunesmith.compare.winners import evaluate_winners, pick_best, scored_per_run
from tunesmith.config import TrainConfig, make_config
from tunesmith.errors import ConfigError, UserInputError
from tunesmith.report.metrics import read_metrics
from tunesmith.train.signals import Diverged, Interrupted

# --quick: the demo compare of two methods with the search in under 30 minutes on 2 cores.
QUICK_STEPS, QUICK_VALIDATION = 50, 40
STATE = Path("search") / "state.json"


@dataclass(frozen=True)
class SearchSettings:
    """How much searching: the grid, the steps of each run and the validation examples scored.

    Attributes:
        grid: Multipliers of each method's default learning rate.
        extensions: Rates tried past the grid's edge per method while its best rate is on the
            edge (:func:`~tunesmith.compare.grid.next_rate`).
        steps: Optimizer steps of every search run; None: the compare's own budget.
        validation_limit: Validation examples scored per run; None: the compare's eval limit.
    """

    grid: tuple[float, ...] = DEFAULT_GRID
    steps: int | None = None
    validation_limit: int | None = None
    extensions: int = EDGE_EXTENSIONS

    @classmethod
    def quick(
        cls, max_steps: int | None, grid: Sequence[float] | None = None, steps: int | None = None
    ) -> SearchSettings:
        """``--quick``: at most ``QUICK_STEPS`` steps, ``QUICK_VALIDATION`` scored examples, one
        rate past the grid's edge."""
        short = min(QUICK_STEPS, max_steps) if max_steps else QUICK_STEPS
        return cls(tuple(grid or DEFAULT_GRID), steps or short, QUICK_VALIDATION, 1)


@dataclass
class SearchRun:
    """One (method, learning rate) the search trained.

    Attributes:
        method: The method.
        lr: Its learning rate.
        multiplier: ``lr`` over the method's default.
        status: ``ok``, ``diverged`` (stopped early) or ``failed``.
        run_dir: Its run directory, when one was made.
        validation_metric: The task metric on the validation split.
        validation_loss: Eval loss (mean NLL per answer token) on the validation split.
        general_perplexity: Perplexity on the bundled general text after training.
        forgetting: ``general_perplexity`` over the base's, minus 1.
        trainable_params: Parameters the optimizer updated.
        total_params: All parameters of the trained model.
        best: The method's pick (best validation score).
        reason: Why it diverged or failed.
    """

    method: str
    lr: float
    multiplier: float
    status: str
    run_dir: str | None = None
    validation_metric: float | None = None
    validation_loss: float | None = None
    general_perplexity: float | None = None
    forgetting: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    best: bool = False
    reason: str | None = None


@dataclass
class Searched:
    """What the search left, in the shape ``compare`` tabulates (see ``compare.run._Trained``).

    Attributes:
        rows: One row per method: its best run, with test-set figures.
        runs: Every (method, rate) tried.
        shared: The cleaned (training, test) files.
        first_eval: The base's test ``eval.json`` (with its general-text perplexity).
        base_total: The base model's parameter count, when a run could tell.
        settings: The search's settings, for ``compare.json``.
    """

    rows: list[MethodRow] = field(default_factory=list)
    runs: list[SearchRun] = field(default_factory=list)
    shared: tuple[str, str] | None = None
    first_eval: dict[str, Any] | None = None
    base_total: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def started(out: Path) -> bool:
    """Whether ``out`` holds a search to continue."""
    return (out / STATE).is_file()


def check_searchable(cfg: TrainConfig) -> None:
    """Refuse what the search cannot score: a preference objective (no generation task).

    Raises:
        ConfigError: ``cfg.objective`` is not ``sft``.
    """
    if cfg.objective != "sft":
        raise ConfigError("objective", cfg.objective, "sft with --lr-search")


def search_methods(
    names: list[str],
    cfg: TrainConfig,
    out: Path,
    settings: SearchSettings,
    say: Callable[[str], None],
    progress_factory: Callable[[int], Any] | None = None,
) -> Searched:
    """Search every method's learning rate and evaluate each winner on the test set.

    Raises:
        ConfigError: A preference objective (:func:`check_searchable`).
        UserInputError: ``out`` holds a search made with other settings, or too little data.
        Interrupted: Ctrl-C / SIGTERM; finished runs are kept for the next call.
    """
    check_searchable(cfg)
    train, test = clean_once(cfg, out / "search")
    split = split_validation(train, out / "search", cfg.seed)
    steps = settings.steps or cfg.max_steps
    state = _load_state(out, _fingerprint(cfg, split, steps, settings))
    done = {(r["method"], r["lr"]): SearchRun(**r) for r in state["runs"]}
    stop = diverging(math.ceil(cfg.warmup_ratio * steps) if steps else 0)
    result = Searched(shared=(str(train), str(test)))
    result.settings = {
        "grid": list(settings.grid), "extensions": settings.extensions, "steps": steps,
        "validation_n": split.n_validation,
        "validation_limit": settings.validation_limit or cfg.eval_limit, "fit_n": split.n_fit,
        "validation_data": str(split.validation), "fit_data": str(split.fit),
    }  # fmt: skip
    for i, method in enumerate(names, 1):
        default = lr_for(method, cfg)
        runs: list[SearchRun] = []
        rates = lr_grid(default, settings.grid)
        extended = 0
        while rates:
            lr = rates.pop(0)
            run = done.get((method, lr))
            if run is None or (run.status == "ok" and not _finished(run.run_dir)):
                say(f"[{i}/{len(names)}] {method} lr {lr:g} (x{lr / default:.3g})")
                base = state["base_validation"]
                run = _train(
                    partial(_run_config, cfg, method, lr, out, split, steps, settings, base is None),
                    SearchRun(method, lr, round(lr / default, 4), "ok"), say, progress_factory, stop,
                )  # fmt: skip
                if run.status == "ok" and base is None:
                    state["base_validation"] = _base_side(Path(run.run_dir))
                state["runs"] = [r for r in state["runs"] if (r["method"], r["lr"]) != (method, lr)]
                state["runs"].append(asdict(run))
                write_json(out / STATE, state)
            else:
                say(f"[{i}/{len(names)}] {method} lr {lr:g}: done before ({run.status}), kept")
            runs.append(run)
            if not rates and extended < settings.extensions:
                best = pick_best(runs, scored_per_run(result.settings))
                nxt = next_rate([r.lr for r in runs], best and best.lr, settings.grid)
                if nxt is not None:
                    extended += 1
                    say(f"[{i}/{len(names)}] {method}: best rate {best.lr:g} is on the grid's edge")
                    rates.append(nxt)
        result.runs += runs
    base_general = (state["base_validation"] or {}).get("general_perplexity")
    for run in result.runs:
        run.best = False
        if run.general_perplexity is not None and base_general:
            run.forgetting = run.general_perplexity / base_general - 1.0
    evaluate_winners(result, names, cfg, out, test, base_general, say)
    task = (result.first_eval or {}).get("task", "")
    result.settings["base_validation_metric"] = (state["base_validation"] or {}).get(
        task_metric_name(task)
    )
    return result


def clean_once(cfg: TrainConfig, root: Path) -> tuple[Path, Path]:
    """Clean the data as ``train`` does, once for the whole search: (training, test) files."""
    from tunesmith.data.render import ensure_chat_template
    from tunesmith.models.loading import load_tokenizer, resolve_model
    from tunesmith.rundir import RunDir
    from tunesmith.train.steps import prepare_data

    tokenizer = load_tokenizer(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code)
    ensure_chat_template(tokenizer, cfg.template)
    run = RunDir(root)
    prepare_data(cfg, run, tokenizer, reuse=True)  # a resumed search reads its files back
    if not run.eval_data.is_file():
        raise UserInputError("--lr-search needs a test set: pass --eval-data")
    return run.train_data, run.eval_data


def _fingerprint(
    cfg: TrainConfig, split: ValidationSplit, steps: int | None, s: SearchSettings
) -> dict[str, Any]:
    """What a resumed search must share with the one it continues."""
    return {
        "model": cfg.model, "seed": cfg.seed, "steps": steps, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seq_len": cfg.seq_len,
        "validation_n": split.n_validation, "validation_limit": s.validation_limit or cfg.eval_limit,
        "target": cfg.target, "rank": cfg.rank,
    }  # fmt: skip


def _load_state(out: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    path = out / STATE
    if not path.is_file():
        state = {"fingerprint": fingerprint, "base_validation": None, "runs": []}
        write_json(path, state)
        return state
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        raise UserInputError(
            f"{out} holds a learning-rate search with other settings; choose another --output "
            "or pass --overwrite"
        )
    return state


def _run_config(
    cfg: TrainConfig,
    method: str,
    lr: float,
    out: Path,
    split: ValidationSplit,
    steps: int | None,
    settings: SearchSettings,
    score_base: bool,
) -> TrainConfig:
    values = cfg.model_dump()
    values.update(
        method=method, lr=lr, output=str(out / method / f"lr-{lr:g}"), overwrite=False,
        data=[str(split.fit)], eval_data=str(split.validation),
        eval_limit=settings.validation_limit or cfg.eval_limit, skip_base_eval=not score_base,
    )  # fmt: skip
    if steps:
        values["max_steps"] = steps
    return make_config(values)


def _train(
    build: Callable[[], TrainConfig],
    run: SearchRun,
    say: Callable[[str], None],
    progress_factory: Callable[[int], Any] | None,
    stop: Callable[[list[float]], str | None],
) -> SearchRun:
    """One search run (``run``, filled in): train, then read its validation scores from what
    it wrote. A rate the config refuses (e.g. above its maximum) fails like a run."""
    import gc

    from tunesmith.compare.run import error_text
    from tunesmith.errors import WorkFailed
    from tunesmith.train.run import run_training

    tag = f"{run.method} lr {run.lr:g}"
    try:
        run_cfg = build()
    except ConfigError as exc:
        run.status, run.reason = "failed", error_text(exc)
        say(f"  {tag}: failed: {run.reason}")
        return run
    run_dir = Path(run_cfg.output)
    run.run_dir = str(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted try of this rate: start over
    try:
        trained = run_training(
            run_cfg, say=lambda m: say(f"  {tag}: {m}"), progress_factory=progress_factory,
            stop_when=stop,
        )  # fmt: skip
    except Interrupted:
        say(f"  {tag}: interrupted; finished runs are kept, run the same command to go on")
        raise
    except Exception as exc:  # one rate's failure must not end the search
        diverged = isinstance(exc, Diverged) or (
            isinstance(exc, WorkFailed) and "diverged" in str(exc)
        )
        run.status, run.reason = ("diverged" if diverged else "failed"), error_text(exc)
        run.run_dir = str(run_dir) if run_dir.exists() else None
        say(f"  {tag}: {run.status}: {run.reason}")
        return run
    finally:
        gc.collect()  # the finished model is unreachable now; free it before the next
    run.trainable_params, run.total_params = trained.trainable_params, trained.total_params
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    adapted = (ev.get("metrics") or {}).get("adapted") or {}
    run.validation_metric = adapted.get(task_metric_name(ev.get("task", "")))
    run.general_perplexity = adapted.get("general_perplexity")
    losses = [r["eval_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]
    run.validation_loss = losses[-1] if losses else None
    return run


def _finished(run_dir: str | None) -> bool:
    return bool(run_dir) and (Path(run_dir) / "eval.json").is_file()


def _base_side(run_dir: Path) -> dict[str, Any] | None:
    """The base model's validation scores, from the run that evaluated it."""
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    return (ev.get("metrics") or {}).get("base")
