"""Evaluate a model on held-out conversations: task metrics from greedy generations.

The task decides the metric: the clinic demo (``meta.task == "clinic-sql"``) is scored by
execution accuracy against its sqlite database; any other data by exact match and ROUGE-L.
Degeneration (generations that hit the length limit without ending their turn) is reported
for every task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.data.records import Conversation
from tunesmith.data.render import render_prompt
from tunesmith.eval.generate import Generation, generate

SQL_TASK = "clinic-sql"


def default_max_new_tokens(task: str) -> int:
    # Gold demo queries are at most ~56 tokens; a base model that rambles is cut at 64
    # instead of spending most of the evaluation generating prose.
    return 64 if task == SQL_TASK else 256


def task_of(convs: Sequence[Conversation]) -> str:
    tasks = {c.meta.get("task") for c in convs}
    return SQL_TASK if tasks == {SQL_TASK} else "text"


@dataclass
class SideResult:
    """Scores of one model (base or adapted) and its generations; ``cached``: read back from
    an identical earlier evaluation (:mod:`tunesmith.eval.base_cache`)."""

    metrics: dict[str, float]
    generations: list[Generation]
    cached: bool = False


def score(
    task: str, convs: Sequence[Conversation], gens: Sequence[Generation], max_new_tokens: int
) -> dict[str, float]:
    from tunesmith.eval.text_metrics import hit_length_limit_share, repeated_ngram_rate

    preds = [g.text for g in gens]
    refs = [c.answer for c in convs]
    if task == SQL_TASK:
        from tunesmith.eval.sql import score_sql

        seed = int(convs[0].meta.get("db_seed", 0)) if convs else 0
        s = score_sql(preds, refs, db_seed=seed)
        metrics = {
            "execution_accuracy": s["execution_accuracy"],
            "exact_match": s["exact_match"],
            "sql_errors": s["n_errors"] / max(s["n"], 1),
        }
    else:
        from tunesmith.eval.text_metrics import exact_match, rouge_l

        metrics = {"exact_match": exact_match(preds, refs), "rouge_l": rouge_l(preds, refs)}
    metrics["hit_length_limit"] = hit_length_limit_share(gens, max_new_tokens)
    metrics["repeated_4gram_rate"] = repeated_ngram_rate(preds, n=4)
    return metrics


def answer_matches(task: str, convs: Sequence[Conversation], preds: Sequence[str]) -> list[bool]:
    """Whether each prediction is right, by the task's metric: execution match on the clinic
    SQL task (each record's ``meta["db_seed"]`` database), exact match otherwise."""
    if task == SQL_TASK:
        from tunesmith.eval.sql import match_sql

        seeds = [int(c.meta.get("db_seed", 0)) for c in convs]
        return [m.match for m in match_sql(preds, [c.answer for c in convs], db_seed=seeds)]
    from tunesmith.eval.text_metrics import normalize_answer

    return [
        normalize_answer(p) == normalize_answer(c.answer) for p, c in zip(preds, convs, strict=True)
    ]


def evaluate_side(
    model,
    tokenizer,
    convs: Sequence[Conversation],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> SideResult:
    max_new_tokens = max_new_tokens or default_max_new_tokens(task_of(convs))
    prompts = [render_prompt(tokenizer, c) for c in convs]
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return SideResult(score(task_of(convs), convs, gens, max_new_tokens), gens)


def eval_report(
    convs: Sequence[Conversation],
    base: SideResult | None,
    adapted: SideResult | None,
    *,
    model: str,
    adapter: str | None,
    extra: dict[str, dict[str, float]] | None = None,
    n_samples: int = 8,
) -> dict[str, Any]:
    """The ``eval.json`` object (DESIGN.md) from one or both sides."""
    metrics: dict[str, dict[str, float]] = {}
    if base:
        metrics["base"] = dict(base.metrics)
    if adapted:
        metrics["adapted"] = dict(adapted.metrics)
    for side, values in (extra or {}).items():
        metrics.setdefault(side, {}).update(values)
    samples = []
    for i, c in enumerate(convs[:n_samples]):
        samples.append(
            {
                "prompt": c.prompt_turns[-1].content if c.prompt_turns else "",
                "reference": c.answer,
                "base": base.generations[i].text if base else None,
                "adapted": adapted.generations[i].text if adapted else None,
            }
        )
    return {
        "task": task_of(convs),
        "n": len(convs),
        "model": model,
        "adapter": adapter,
        "metrics": metrics,
        "samples": samples,
    }


def answer_perplexity(
    model, tokenizer, convs: Sequence[Conversation], *, seq_len: int = 1024, batch_size: int = 16
) -> float:
    """exp(mean NLL) over the assistant tokens of the eval conversations."""
    import math

    import torch

    from tunesmith.data.dataset import collate, tokenize_conversations
    from tunesmith.loss import loss_sum

    examples = tokenize_conversations(tokenizer, convs, seq_len=seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            b = collate(examples[i : i + batch_size], tokenizer.pad_token_id).to(device)
            total += float(loss_sum(model, b))
            n += b.num_trained
    model.train(was_training)
    return math.exp(total / max(n, 1))


def perplexities(
    model, tokenizer, convs: Sequence[Conversation], *, forgetting: bool = True
) -> dict[str, float]:
    """The no-generation metrics of one side: answer perplexity and, for forgetting, general-text
    perplexity (:mod:`tunesmith.eval.general_text`); compare a side's values with the base's."""
    from tunesmith.eval.general_text import general_texts, perplexity

    out = {"answer_perplexity": answer_perplexity(model, tokenizer, convs)}
    if forgetting:
        out["general_perplexity"] = perplexity(model, tokenizer, general_texts())
    return out
