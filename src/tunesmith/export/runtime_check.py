"""Check a GGUF file in llama.cpp itself against the adapted model it was exported from.

The adapted model (base + unmerged adapter, fp32, tunesmith's own batched greedy generation)
answers the held-out prompts first; then llama.cpp loads the GGUF, renders the same prompts
with the chat template *stored in the file*, tokenizes them with its own tokenizer and
generates greedily until one of its end-of-generation tokens. Measured per file:

* same answers: share of prompts whose answer text equals the adapted model's;
* token agreement: share of the adapted answer's tokens before the first divergence;
* the task metric (execution accuracy for the clinic demo, exact match otherwise) of both,
  when the prompts carry reference answers;
* stops: on every prompt where the adapted model ended its turn, llama.cpp must end with one of
  the end-of-turn ids the model was trained to emit, within twice the token budget (no runaway);
* the chat template read back from the file, and llama.cpp's prompt tokenization vs ours.

Which of same answers / task metric must hold is stated per type in
:mod:`tunesmith.export.quants`; both are judged on held-out prompts with reference answers (a
run's eval split or ``--held-out FILE``). Any failed check raises :class:`RuntimeCheckFailed`
(exit 1) naming the prompts that diverged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tunesmith.data.records import Conversation
from tunesmith.errors import WorkFailed
from tunesmith.export.quants import MAX_METRIC_DROP, MIN_SAME_ANSWERS, get_quant
from tunesmith.export.verify import DEFAULT_PROMPTS, CheckResult
from tunesmith.models.artifact import Artifact


@dataclass
class AdaptedAnswers:
    """What the adapted model answered; the yardstick for every GGUF of one export."""

    convs: list[Conversation]
    generations: list[Any]  # tunesmith.eval.generate.Generation, one per conversation
    prompt_ids: list[list[int]]
    stop_ids: list[int]
    chat_template: str | None
    max_new_tokens: int
    tokens_per_s: float
    tokenizer: Any = field(repr=False)


@dataclass
class RuntimeReport(CheckResult):
    """The llama.cpp check of one GGUF; ``passed`` is False when ``failures`` is not empty."""

    runtime: str
    quant: str
    check: str
    n_prompts: int
    same_answers: float
    token_agreement: float
    task: str
    metric: str | None
    metric_gguf: float | None
    metric_adapted: float | None
    stopped_at_end_of_turn: int
    adapted_stopped: int
    prompt_token_agreement: float
    chat_template_preserved: bool
    tokens_per_s: float
    adapted_tokens_per_s: float
    limits: dict[str, Any]
    diverged: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RuntimeCheckFailed(WorkFailed):
    """The GGUF did not answer as the adapted model does in llama.cpp (exit 1)."""

    def __init__(self, report: RuntimeReport):
        self.report = report
        shown = "; ".join(
            f"#{d['index']} {d['prompt'][:60]!r}: adapted {d['adapted'][:60]!r}, "
            f"gguf {d['gguf'][:60]!r}"
            for d in report.diverged[:5]
        )
        more = f" (and {len(report.diverged) - 5} more)" if len(report.diverged) > 5 else ""
        super().__init__(
            "llama.cpp check failed: "
            + "; ".join(report.failures)
            + (f". Diverged prompts: {shown}{more}" if shown else "")
        )


def held_out_conversations(
    source: Artifact, prompts_file: str | Path | None = None, limit: int | None = None
) -> list[Conversation]:
    """The prompts the llama.cpp check asks: ``prompts_file``, else the run's eval split, else
    a few built-in questions (without reference answers: answers are then reported, and only
    the stops and the chat template are checked)."""
    from tunesmith.data.readers import read_file
    from tunesmith.rundir import RunDir

    path = prompts_file
    if path is None and source.run_dir is not None and RunDir(source.run_dir).eval_data.is_file():
        path = RunDir(source.run_dir).eval_data
    if path is None:
        return [
            Conversation.from_messages([{"role": "user", "content": p}]) for p in DEFAULT_PROMPTS
        ]
    records = (r for r in read_file(path) if isinstance(r, Conversation) and r.prompt_turns)
    return list(islice(records, limit))


def adapted_answers(
    model, tokenizer, convs: list[Conversation], max_new_tokens: int | None = None
) -> AdaptedAnswers:
    """Greedy answers of the adapted model with tunesmith's own generation, timed."""
    from tunesmith.data.render import render_prompt
    from tunesmith.eval.evaluate import default_max_new_tokens, task_of
    from tunesmith.eval.generate import generate, stop_token_ids

    max_new_tokens = max_new_tokens or default_max_new_tokens(task_of(convs))
    prompts = [render_prompt(tokenizer, c) for c in convs]
    start = time.perf_counter()
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    return AdaptedAnswers(
        convs=list(convs),
        generations=gens,
        prompt_ids=[tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
        stop_ids=stop_token_ids(model, tokenizer),
        chat_template=getattr(tokenizer, "chat_template", None),
        max_new_tokens=max_new_tokens,
        tokens_per_s=sum(g.num_new_tokens for g in gens) / max(seconds, 1e-9),
        tokenizer=tokenizer,
    )


def _prefix_share(ref: list[int], got: list[int]) -> float:
    n = 0
    for a, b in zip(ref, got, strict=False):
        if a != b:
            break
        n += 1
    return n / max(len(ref), 1)


def _llamacpp_version() -> str:
    from importlib.metadata import version

    return f"llama.cpp (llama-cpp-python {version('llama-cpp-python')})"


def check_in_llamacpp(path: Path, ref: AdaptedAnswers, quant: str) -> RuntimeReport:
    """Load ``path`` in llama.cpp, answer ``ref``'s prompts greedily, compare and judge."""
    from tunesmith.eval.evaluate import score, task_of
    from tunesmith.eval.generate import Generation
    from tunesmith.export.llamacpp import LlamaCppModel

    tok = ref.tokenizer
    q = get_quant(quant)
    llm = LlamaCppModel(path)
    try:
        template = llm.metadata.get("tokenizer.chat_template")
        gens, canon, prompt_same, stopped, seconds = [], [], 0, [], 0.0
        for conv, hf_ids in zip(ref.convs, ref.prompt_ids, strict=True):
            messages = [{"role": t.role, "content": t.content} for t in conv.prompt_turns]
            text = tok.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
            ids = llm.tokenize(text)
            prompt_same += ids == hf_ids
            answer = llm.greedy(ids, 2 * ref.max_new_tokens)
            seconds += answer.seconds
            stopped.append(answer.stop_id in ref.stop_ids)
            kept = answer.ids[: ref.max_new_tokens]
            ended = answer.stop_id is not None and len(answer.ids) <= ref.max_new_tokens
            text_out = tok.decode(kept, skip_special_tokens=True).strip()
            gens.append(Generation(text_out, len(kept) + int(ended), ended))
            canon.append(tok(text_out, add_special_tokens=False)["input_ids"])
    finally:
        llm.close()
    n = len(ref.convs)
    task = task_of(ref.convs)
    report = RuntimeReport(
        runtime=_llamacpp_version(),
        quant=quant,
        check=q.check,
        n_prompts=n,
        same_answers=sum(g.text == r.text for g, r in zip(gens, ref.generations, strict=True))
        / max(n, 1),
        token_agreement=sum(
            _prefix_share(tok(r.text, add_special_tokens=False)["input_ids"], c)
            for r, c in zip(ref.generations, canon, strict=True)
        )
        / max(n, 1),
        task=task,
        metric=None,
        metric_gguf=None,
        metric_adapted=None,
        stopped_at_end_of_turn=sum(stopped),
        adapted_stopped=sum(g.ended_with_eos for g in ref.generations),
        prompt_token_agreement=prompt_same / max(n, 1),
        chat_template_preserved=template == ref.chat_template,
        tokens_per_s=sum(g.num_new_tokens for g in gens) / max(seconds, 1e-9),
        adapted_tokens_per_s=ref.tokens_per_s,
        limits={"min_same_answers": MIN_SAME_ANSWERS, "max_metric_drop_points": MAX_METRIC_DROP},
    )
    if all(c.answer for c in ref.convs) and n:
        report.metric = "execution_accuracy" if task == "clinic-sql" else "exact_match"
        report.metric_gguf = score(task, ref.convs, gens, ref.max_new_tokens)[report.metric]
        report.metric_adapted = score(task, ref.convs, ref.generations, ref.max_new_tokens)[
            report.metric
        ]
    report.diverged = [
        {"index": i, "prompt": c.prompt_turns[-1].content, "adapted": r.text, "gguf": g.text}
        for i, (c, r, g) in enumerate(zip(ref.convs, ref.generations, gens, strict=True))
        if r.text != g.text
    ]
    _judge(report, ref, stopped)
    return report


def _judge(report: RuntimeReport, ref: AdaptedAnswers, stopped: list[bool]) -> None:
    """Append a failure for every check ``report`` does not pass."""
    if ref.chat_template and not report.chat_template_preserved:
        report.failures.append("the GGUF does not carry the model's chat template")
    runaway = [
        i for i, (g, s) in enumerate(zip(ref.generations, stopped, strict=True))
        if g.ended_with_eos and not s
    ]  # fmt: skip
    if runaway:
        report.failures.append(
            f"no end-of-turn stop (ids {ref.stop_ids}) on {len(runaway)} prompts where the "
            f"adapted model stopped: #{', #'.join(map(str, runaway[:10]))}"
        )
    if report.prompt_token_agreement < 1.0:
        report.notes.append(
            f"llama.cpp tokenizes {report.prompt_token_agreement:.0%} of the prompts exactly as "
            "the source tokenizer does"
        )
    if report.metric is None:
        # Built-in prompts (an adapter directory without --held-out): no held-out answers to
        # hold the file to, and an untrained model's near-tied greedy choices are not a verdict.
        report.notes.append(
            "no held-out prompts with reference answers (pass --held-out FILE or export a run "
            "directory): answers and task metric reported, not checked"
        )
        return
    if report.check == "answers" and report.same_answers < MIN_SAME_ANSWERS:
        report.failures.append(
            f"same greedy answers on {report.same_answers:.1%} of prompts, "
            f"below {MIN_SAME_ANSWERS:.0%} ({report.quant})"
        )
    drop = 100 * (report.metric_adapted - report.metric_gguf)
    if report.check == "task" and drop > MAX_METRIC_DROP:
        report.failures.append(
            f"{report.metric} {report.metric_gguf:.1%} is {drop:.1f} points below the "
            f"adapted model's {report.metric_adapted:.1%} (limit {MAX_METRIC_DROP:g})"
        )
