"""The end of ``compare --lr-search``: each method's pick, evaluated on the test set.

The pick is the run with the best task metric on the validation split, or, among the runs
within that metric's standard error of it, the one with the lowest validation loss. It
trained on the training data minus the validation split and never saw the test set, so its
saved model is evaluated as it is (``test_eval.json`` beside it), with the same evaluation
code ``tunesmith eval`` runs; the base model is evaluated once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from tunesmith.compare.rows import MethodRow, base_param_count, row_from_run_dir, task_metric_name
from tunesmith.config import TrainConfig

if TYPE_CHECKING:
    from tunesmith.compare.search import Searched, SearchRun


def pick_best(runs: Sequence[SearchRun], scored: int | None = None) -> SearchRun | None:
    """The finished run with the highest validation metric; among runs whose metric is within
    noise of the highest, the one with the lowest validation loss.

    ``scored`` is how many validation examples each metric counts. A share of ``n`` examples
    has a standard error of ``sqrt(p (1 - p) / n)``, and never less than one example: on 40
    questions 0.875 and 0.900 are one answer apart, and the validation loss (every answer
    token of every example) tells those rates apart better. Without ``scored`` only equal
    metrics tie.
    """
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return None

    def metric(r: SearchRun) -> float:
        return r.validation_metric if r.validation_metric is not None else -math.inf

    def loss(r: SearchRun) -> float:
        return r.validation_loss if r.validation_loss is not None else math.inf

    top = max(metric(r) for r in ok)
    margin = 0.0
    if scored and math.isfinite(top) and 0.0 <= top <= 1.0:
        margin = max(math.sqrt(top * (1.0 - top) / scored), 1.0 / scored)
    tied = [r for r in ok if metric(r) >= top - margin - 1e-12]
    return min(tied, key=lambda r: (loss(r), -metric(r)))


def scored_per_run(settings: dict[str, Any]) -> int | None:
    """Validation examples each search run was scored on, from ``Searched.settings``."""
    n, limit = settings.get("validation_n"), settings.get("validation_limit")
    return min(n, limit) if n and limit else n or limit


def evaluate_winners(
    result: Searched,
    names: list[str],
    cfg: TrainConfig,
    out: Path,
    test: Path,
    base_general: float | None,
    say: Callable[[str], None],
) -> None:
    """Pick each method's best run (marked ``best``), evaluate it and the base on the test set,
    and fill ``result.rows``, ``first_eval`` and ``base_total``."""
    say("evaluating the base model on the test set ...")
    base = _test_eval(None, cfg, test, out / "search" / "base_test_eval.json")
    if base_general is not None:
        base.setdefault("metrics", {}).setdefault("base", {})["general_perplexity"] = base_general
    result.first_eval = base
    for method in names:
        runs = [r for r in result.runs if r.method == method]
        best = pick_best(runs, scored_per_run(result.settings))
        if best is None:
            why = "; ".join(f"lr {r.lr:g} {r.status}: {r.reason}" for r in runs)
            result.rows.append(MethodRow(method, error=f"no learning rate finished ({why})"))
            continue
        best.best = True
        say(f"{method}: best validation lr {best.lr:g}; evaluating it on the test set ...")
        report = _test_eval(Path(best.run_dir), cfg, test, Path(best.run_dir) / "test_eval.json")
        row = _test_row(best, report)
        result.rows.append(row)
        result.base_total = result.base_total or base_param_count(
            method,
            SimpleNamespace(total_params=row.total_params, trainable_params=row.trainable_params),
        )


def _test_row(best: SearchRun, report: dict[str, Any]) -> MethodRow:
    """The method's row: its best run's parameters and time, with the *test* figures."""
    row = row_from_run_dir(best.run_dir)
    adapted = (report.get("metrics") or {}).get("adapted") or {}
    row.task_metric = adapted.get(task_metric_name(report.get("task", "")))
    row.exact_match = adapted.get("exact_match")
    ppl = adapted.get("answer_perplexity")
    row.eval_perplexity = ppl
    row.eval_loss = math.log(ppl) if ppl else None
    row.general_perplexity = best.general_perplexity
    row.trainable_params, row.total_params = best.trainable_params, best.total_params
    row.trainable_share = None  # compare divides by the base's count, the same for every row
    return row


def _test_eval(source: Path | None, cfg: TrainConfig, test: Path, target: Path) -> dict[str, Any]:
    """``eval.json`` of ``source`` (a run; None: the base) on the test set, made once."""
    if target.is_file():
        return json.loads(target.read_text(encoding="utf-8"))
    from tunesmith.eval.api import evaluate

    return evaluate(
        source, model=None if source else cfg.model, data=test, limit=cfg.eval_limit,
        batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        base=source is None, forgetting=False, out=target,
    )  # fmt: skip
