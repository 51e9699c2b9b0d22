"""``tunesmith compare``: train several methods on the same data and budget, then tabulate.

The workflow: validate the method list -> for each method, one ordinary
:func:`~tunesmith.train.run.run_training` under ``<output>/<method>/`` -> its row (parameters,
task metric, eval perplexity, peak memory, time, tokens/s) -> batch-1 latency of every trained
model and the base -> ``compare.json``, ``compare.png``.

Fairness: every method gets the same steps, seed, batch, sequence length and examples. The
data is cleaned once, by the first run; later runs read that run's ``data/train.jsonl`` and
``data/train.eval.jsonl``, so near-duplicate removal or the eval split cannot differ between
methods. Only the learning rate differs, per method (:mod:`tunesmith.compare.lr`), unless the
user chose one. A method that fails (out of memory, a model it cannot adapt) gets a row with
its error and the comparison goes on.

With a :class:`~tunesmith.compare.search.SearchSettings` each method is trained at several
learning rates instead, scored on a validation split of the training data, and reported at
its best one (:mod:`tunesmith.compare.search`); ``compare_forgetting.png`` plots every rate's
task metric against its forgetting (:mod:`tunesmith.compare.pareto`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.atomic import atomic_path, write_json
from tunesmith.compare.latency import Latencies, LatencySettings, measure_latencies
from tunesmith.compare.lr import lr_for
from tunesmith.compare.pareto import render_forgetting_png
from tunesmith.compare.plot import render_compare_png
from tunesmith.compare.rows import (
    MethodRow,
    base_param_count,
    base_row,
    fill_forgetting,
    row_from_run,
    task_metric_name,
)
from tunesmith.compare.search import SearchSettings, check_searchable, search_methods, started
from tunesmith.config import TrainConfig, make_config
from tunesmith.errors import ConfigError, UserInputError
from tunesmith.train.loop import Interrupted

LATENCY_FALLBACK_PROMPT = "How many patients visited the clinic last month?"


@dataclass
class CompareResult:
    """What ``compare`` measured.

    Attributes:
        output: The comparison directory (``compare.json``, ``compare.png``, one run per method).
        rows: One row per method in the order given (failed methods carry ``error``).
        base: The untrained base model's row (task metric and latency), if measured.
        metric_name: Name of the task metric (``execution_accuracy`` or ``rouge_l``).
        settings: The shared settings written to ``compare.json``.
        plot: Path of ``compare.png``, or None when there was nothing to plot.
        search: With ``--lr-search``, every :class:`~tunesmith.compare.search.SearchRun`.
        forgetting_plot: ``compare_forgetting.png`` (search only), or None.
    """

    output: Path
    rows: list[MethodRow]
    base: MethodRow | None
    metric_name: str
    settings: dict[str, Any] = field(default_factory=dict)
    plot: Path | None = None
    search: list[Any] | None = None
    forgetting_plot: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``compare.json`` object: ``{"settings": {...}, "rows": [base?, method...]}``,
        and with ``--lr-search`` ``"search"``: every (method, rate) tried."""
        rows = ([self.base] if self.base else []) + self.rows
        out = {"settings": self.settings, "rows": [r.to_dict(self.metric_name) for r in rows]}
        if self.search is not None:
            out["search"] = [asdict(r) for r in self.search]
        return out


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """Split ``"lora,full"`` / ``["lora", "full"]`` into known, de-duplicated method names.

    Raises:
        ConfigError: An unknown or empty method list (names the allowed ones).
    """
    items = [methods] if isinstance(methods, str) else list(methods)
    names = list(dict.fromkeys(m.strip() for item in items for m in item.split(",") if m.strip()))
    from tunesmith.methods.base import is_method, method_names

    unknown = [m for m in names if not is_method(m)]
    if unknown or not names:
        raise ConfigError(
            "methods", ",".join(unknown) or "", "a comma list of " + ", ".join(method_names())
        )
    return names


def _base_config(base_config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
    if isinstance(base_config, TrainConfig):
        return base_config
    return make_config(dict(base_config or {}))


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and overwrite:
        import shutil

        shutil.rmtree(output)
    if output.exists() and any(output.iterdir()):
        raise UserInputError(
            f"output directory {output} is not empty; choose another --output or pass --overwrite"
        )
    output.mkdir(parents=True, exist_ok=True)


def _method_config(
    cfg: TrainConfig,
    method: str,
    output: Path,
    shared: tuple[str, str] | None,
    base_scored: bool,
) -> TrainConfig:
    values = cfg.model_dump()
    values.update(method=method, output=str(output / method), lr=lr_for(method, cfg))
    values["overwrite"] = False
    if shared is not None:  # the first run's cleaned files: identical examples for everyone
        values["data"], values["eval_data"] = [shared[0]], shared[1]
    if base_scored:  # the base is the same model for every method: generate its answers once
        values["skip_base_eval"] = True
    return make_config(values)


def _has_base(eval_json: dict[str, Any] | None) -> bool:
    return bool(((eval_json or {}).get("metrics") or {}).get("base"))


def _shared_data(run_dir: Path) -> tuple[str, str] | None:
    train, evals = run_dir / "data" / "train.jsonl", run_dir / "data" / "train.eval.jsonl"
    return (str(train), str(evals)) if train.is_file() and evals.is_file() else None


def _first_prompt(shared: tuple[str, str] | None) -> str:
    """The first held-out prompt (rendered without template: latency needs tokens, not chat)."""
    if shared is None:
        return LATENCY_FALLBACK_PROMPT
    from tunesmith.data.readers import read_files

    for conv in read_files([shared[1]]):
        turns = getattr(conv, "prompt_turns", ())
        if turns:
            return turns[-1].content
    return LATENCY_FALLBACK_PROMPT


def error_text(exc: BaseException) -> str:
    """The first line of an exception, after its type: a failed row's ``error``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def compare(
    methods: str | Sequence[str],
    *,
    base_config: TrainConfig | dict[str, Any] | None = None,
    output: str | Path | None = None,
    latency: bool = True,
    latency_settings: LatencySettings = LatencySettings(),
    say: Callable[[str], None] = print,
    progress_factory: Callable[[int], Any] | None = None,
    search: SearchSettings | None = None,
) -> CompareResult:
    """Train each method on the same data and budget and compare the results.

    Args:
        methods: Method names, as a list or a comma string (``"lora,houlsby,full"``).
        base_config: The shared training config (a :class:`TrainConfig` or a dict of its keys);
            its ``method``, ``output`` and (unless set) ``lr`` are replaced per method.
        output: The comparison directory; default ``base_config.output``, else
            ``runs/compare-<timestamp>``. Must be empty or absent (``overwrite`` empties it).
        latency: Also time a batch-1 forward of every trained model and of the base.
        latency_settings: Prompt length, runs and warm-up of the latency measurement.
        say: Receives progress lines.
        progress_factory: Passed to each training run (a live progress bar).
        search: Search each method's learning rate (:mod:`tunesmith.compare.search`); each row
            is then the method at its best validation rate, with test-set figures, and an
            ``output`` holding an unfinished search is continued, not refused.

    Returns:
        A :class:`CompareResult`; ``compare.json`` and ``compare.png`` are in ``output``.

    Raises:
        ConfigError: An unknown method name or an invalid config (before any training).
        UserInputError: A data file is missing or ``output`` is not empty.

    Example:
        ``compare("lora,full", base_config={"max-steps": 60}, output="runs/cmp")``
    """
    names = parse_methods(methods)
    cfg = _base_config(base_config)
    from tunesmith.train.guard import check_paths

    check_paths(cfg.model_copy(update={"output": None}))  # data files and dataset folders
    out = Path(output or cfg.output or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    if search is not None:
        check_searchable(cfg)  # before the output directory is made
    if search is None or cfg.overwrite or not started(out):
        _prepare_output(out, cfg.overwrite)

    t0 = time.perf_counter()
    if search is not None:
        trained = search_methods(names, cfg, out, search, say, progress_factory)
    else:
        trained = _train_each(names, cfg, out, say, progress_factory)
    rows, base_total = trained.rows, trained.base_total
    lat = None
    if latency:
        lat = _time_latency(rows, cfg, _first_prompt(trained.shared), latency_settings, say)
        base_total = base_total or lat.base_params  # e.g. only QLoRA ran: 4-bit counts packed
    for row in rows:  # one denominator for every share: the base model's parameter count
        if row.error is None and base_total:
            row.trainable_share = row.trainable_params / base_total
    metric = task_metric_name((trained.first_eval or {}).get("task", "text"))
    base = base_row(trained.first_eval, base_total)
    fill_forgetting(rows, base)
    if lat is not None and lat.base_ms is not None:
        base.latency_ms, base.latency_vs_base = lat.base_ms, 1.0

    settings = _settings(
        cfg, names, trained.shared, trained.first_eval, metric, latency, latency_settings
    )
    settings["total_s"] = round(time.perf_counter() - t0, 1)
    result = CompareResult(out, rows, base, metric, settings)
    if search is not None:
        settings["lr_search"], result.search = trained.settings, trained.runs
        settings["max_steps"] = trained.settings["steps"]  # what every search run trained
    write_json(out / "compare.json", result.to_dict())
    result.plot = _write_png(out / "compare.png", render_compare_png(rows, metric, base))
    if search is not None:
        png = render_forgetting_png(
            trained.runs, metric, trained.settings["base_validation_metric"]
        )
        result.forgetting_plot = _write_png(out / "compare_forgetting.png", png)
    return result


def _write_png(path: Path, png: bytes | None) -> Path | None:
    if png is None:
        return None
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


@dataclass
class _Trained:
    """What the training runs left: rows, the shared data files, the base's eval and size."""

    rows: list[MethodRow] = field(default_factory=list)
    shared: tuple[str, str] | None = None
    first_eval: dict[str, Any] | None = None
    base_total: int | None = None


def _train_each(
    names: list[str],
    cfg: TrainConfig,
    out: Path,
    say: Callable[[str], None],
    progress_factory: Callable[[int], Any] | None,
) -> _Trained:
    """One training run per method, in order; a failure becomes an error row."""
    from tunesmith.train.run import run_training

    done = _Trained()
    for i, method in enumerate(names, 1):
        run_cfg = _method_config(cfg, method, out, done.shared, _has_base(done.first_eval))
        say(f"[{i}/{len(names)}] {method} (lr {run_cfg.lr:g}) -> {run_cfg.output}")
        try:
            result = run_training(
                run_cfg,
                say=lambda m, p=method: say(f"  {p}: {m}"),
                progress_factory=progress_factory,
            )
        except Interrupted:
            # Ctrl-C / SIGTERM means stop the comparison, not just this method's run.
            say(f"  {method}: interrupted; the comparison stops here (nothing more is trained)")
            raise
        except Exception as exc:  # one method's failure (e.g. out of memory) must not end the rest
            run_dir = Path(run_cfg.output)
            error = error_text(exc)
            say(f"  {method}: failed: {error}")
            done.rows.append(
                MethodRow(
                    method,
                    lr=run_cfg.lr,
                    run_dir=str(run_dir) if run_dir.exists() else None,
                    error=error,
                )
            )
            done.shared = done.shared or _shared_data(run_dir)
            continue
        finally:
            gc.collect()  # the finished model is unreachable now; free it before the next
        done.rows.append(row_from_run(method, run_cfg.lr, result))
        done.shared = done.shared or _shared_data(result.run_dir)
        done.base_total = done.base_total or base_param_count(method, result)
        if not _has_base(done.first_eval) and result.eval:
            done.first_eval = result.eval
    return done


def _time_latency(
    rows: list[MethodRow],
    cfg: TrainConfig,
    text: str,
    settings: LatencySettings,
    say: Callable[[str], None],
) -> Latencies:
    """Fill ``latency_ms`` and ``latency_vs_base`` of the trained rows."""
    timed = {r.method: Path(r.run_dir) for r in rows if r.error is None and r.run_dir}
    say(f"batch-1 latency: base and {len(timed)} trained models, {settings.runs} runs each")
    lat = measure_latencies(
        cfg.model,
        timed,
        text,
        settings,
        trust_remote_code=cfg.trust_remote_code,
        on_error=lambda m, exc: say(f"  {m}: latency not measured: {error_text(exc)}"),
    )
    for r in rows:
        if r.method in lat.methods:
            r.latency_ms, r.latency_vs_base = lat.methods[r.method]
    return lat


def _settings(
    cfg: TrainConfig,
    methods: list[str],
    shared: tuple[str, str] | None,
    first_eval: dict[str, Any] | None,
    metric: str,
    latency: bool,
    latency_settings: LatencySettings,
) -> dict[str, Any]:
    """The settings every method shared, for ``compare.json``."""
    import torch

    from tunesmith.precision import default_device, resolve_precision

    device = default_device()
    return {
        "methods": methods,
        "model": cfg.model,
        "data": shared[0] if shared else None,
        "eval_data": shared[1] if shared else None,
        "task": (first_eval or {}).get("task"),
        "task_metric": metric,
        "objective": cfg.objective,
        "eval_n": (first_eval or {}).get("n"),
        "max_steps": cfg.max_steps,
        "epochs": None if cfg.max_steps else cfg.epochs,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "target": cfg.target,
        "rank": cfg.rank,
        "lr": cfg.lr if "lr" in cfg.model_fields_set else "per-method default",
        "device": str(device),
        "precision": resolve_precision(cfg.precision, device),
        "threads": torch.get_num_threads(),
        "latency": (
            {
                "prompt_tokens": latency_settings.prompt_tokens,
                "runs": latency_settings.runs,
                "warmup": latency_settings.warmup,
                "batch_size": 1,
            }
            if latency
            else None
        ),
    }
