"""One row of the comparison per method, read from what its training run left behind.

The numbers come from the run's own files (``eval.json``, ``metrics.jsonl``) and its
:class:`~tunesmith.train.run.RunResult`, so ``compare`` reports exactly what ``train`` measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunesmith.report.metrics import read_metrics

# eval.json "task" -> its headline metric (tunesmith.eval.evaluate.score); any other task is
# free text, scored by ROUGE-L. Kept here as data: importing the evaluator would import torch.
TASK_METRICS = {"clinic-sql": "execution_accuracy"}


def task_metric_name(task: str) -> str:
    """The headline metric of an ``eval.json`` task: execution accuracy for the demo, else ROUGE-L."""
    return TASK_METRICS.get(task, "rouge_l")


@dataclass
class MethodRow:
    """What one method (or the base model, ``method="base"``) achieved; ``None`` = not measured.

    Attributes:
        method: Method name, or ``"base"`` for the untrained model.
        lr: Peak learning rate the method trained with.
        trainable_params: Parameters the optimizer updated.
        total_params: All parameters of the trained model as loaded (4-bit weights count packed).
        trainable_share: ``trainable_params`` over the *base* model's parameter count, the same
            denominator for every method (the LoRA paper's "% of parameters").
        task_metric: Execution accuracy (demo) or ROUGE-L of the adapted model's generations.
        exact_match: Share of generations equal to the reference (after normalisation).
        preference_accuracy: Share of held-out pairs whose chosen completion is the more likely
            (preference runs only).
        reward_margin: Mean implicit-reward margin of the objective on those pairs.
        eval_loss: Mean NLL per assistant token on the eval set after training.
        eval_perplexity: ``exp(eval_loss)``.
        general_perplexity: Perplexity on the bundled general-text set after training.
        forgetting: ``general_perplexity`` over the base model's, minus 1 (+0.05 = 5% higher:
            the method erased that much general language modelling).
        peak_mem_bytes: Highest ``peak_mem_bytes`` logged during training.
        train_time_s: Seconds spent in the training loop.
        tokens_per_s: Trained tokens per second over the whole loop.
        latency_ms: Median batch-1 forward latency of a short prompt.
        latency_vs_base: ``latency_ms`` over the base's, timed interleaved with it.
        run_dir: The method's run directory.
        error: Why the method failed (its other fields are then mostly ``None``).
    """

    method: str
    lr: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_share: float | None = None
    task_metric: float | None = None
    exact_match: float | None = None
    preference_accuracy: float | None = None
    reward_margin: float | None = None
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    general_perplexity: float | None = None
    forgetting: float | None = None
    peak_mem_bytes: int | None = None
    train_time_s: float | None = None
    tokens_per_s: float | None = None
    latency_ms: float | None = None
    latency_vs_base: float | None = None
    run_dir: str | None = None
    error: str | None = None

    def to_dict(self, metric_name: str) -> dict[str, Any]:
        """A ``compare.json`` row; ``task_metric`` is stored under its real name; the
        preference figures only where a preference objective measured them."""
        return {
            (metric_name if k == "task_metric" else k): v
            for k, v in asdict(self).items()
            if v is not None or k not in _PREFERENCE_KEYS
        }


_PREFERENCE_KEYS = ("preference_accuracy", "reward_margin")


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return values[-1] if values else None


def row_from_run(method: str, lr: float, result: Any) -> MethodRow:
    """The row of a finished run (``trainable_share`` is filled in once the base size is known).

    Args:
        method: The method the run trained.
        lr: Its learning rate.
        result: The run's :class:`~tunesmith.train.run.RunResult`.
    """
    run_dir = Path(result.run_dir)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    peaks = [r["peak_mem_bytes"] for r in metrics if isinstance(r.get("peak_mem_bytes"), int)]
    eval_loss = _last(metrics, "eval_loss")
    adapted = ((result.eval or {}).get("metrics") or {}).get("adapted") or {}
    task = (result.eval or {}).get("task", "")
    return MethodRow(
        method=method,
        lr=lr,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        task_metric=adapted.get(task_metric_name(task)),
        exact_match=adapted.get("exact_match"),
        preference_accuracy=adapted.get("preference_accuracy"),
        reward_margin=adapted.get("reward_margin"),
        eval_loss=eval_loss,
        eval_perplexity=math.exp(eval_loss) if eval_loss is not None else None,
        general_perplexity=adapted.get("general_perplexity"),
        peak_mem_bytes=max(peaks) if peaks else None,
        train_time_s=round(result.train_seconds, 3),
        tokens_per_s=round(result.tokens_per_s, 1),
        run_dir=str(run_dir),
    )


def base_row(eval_json: dict[str, Any] | None, base_total: int | None) -> MethodRow:
    """The untrained base model's row, from the base side of a run's ``eval.json`` (if any)."""
    ev = eval_json or {}
    base = (ev.get("metrics") or {}).get("base") or {}
    return MethodRow(
        method="base",
        trainable_params=0,
        total_params=base_total,
        trainable_share=0.0,
        task_metric=base.get(task_metric_name(ev.get("task", ""))),
        exact_match=base.get("exact_match"),
        preference_accuracy=base.get("preference_accuracy"),
        reward_margin=base.get("reward_margin"),
        general_perplexity=base.get("general_perplexity"),
        forgetting=0.0 if base.get("general_perplexity") else None,
    )


def fill_forgetting(rows: list[MethodRow], base: MethodRow) -> None:
    """Set each row's ``forgetting`` from its and the base's general-text perplexity."""
    for row in rows:
        if row.general_perplexity is not None and base.general_perplexity:
            row.forgetting = row.general_perplexity / base.general_perplexity - 1.0


def base_param_count(method: str, result: Any) -> int | None:
    """The base model's parameter count, recovered from one run, or None when it cannot be.

    A PEFT method adds exactly its trainable parameters to a frozen base (total - trainable);
    full and freeze train base weights (total). A 4-bit base counts packed weights, so a QLoRA
    run cannot tell.
    """
    from tunesmith.methods import get_method

    spec = get_method(method)
    if spec.quantized_base:
        return None
    if spec.trains_base_weights:
        return result.total_params
    return result.total_params - result.trainable_params


def row_from_run_dir(run_dir: str | Path) -> MethodRow:
    """The row of any finished run directory, from its files alone (for picking runs to compare).

    Parameter counts come from the run's ``plan.json``; time and throughput from
    ``metrics.jsonl`` (its last ``elapsed_s`` and the mean ``tokens_per_s``).
    """
    import json
    from types import SimpleNamespace

    from tunesmith.rundir import RunDir

    run = RunDir(run_dir)

    def read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    params = read(run.plan_path).get("params") or {}
    metrics = read_metrics(run.metrics_path)
    speeds = [r["tokens_per_s"] for r in metrics if isinstance(r.get("tokens_per_s"), (int, float))]
    result = SimpleNamespace(
        run_dir=run.path,
        eval=read(run.eval_path) or None,
        trainable_params=params.get("trainable"),
        total_params=params.get("total"),
        train_seconds=_last(metrics, "elapsed_s") or 0.0,
        tokens_per_s=sum(speeds) / len(speeds) if speeds else 0.0,
    )
    method = run.config.method
    row = row_from_run(method, run.config.lr, result)
    if row.trainable_params and row.total_params:
        base = base_param_count(method, result)
        row.trainable_share = row.trainable_params / base if base else None
    return row
