"""On-policy preference pairs: the rejected answer is a mistake the model itself makes.

Rule-made pairs (:mod:`tunesmith.demo.pairs`) are often already ranked right by a fine-tuned
model, so DPO on them has nothing to correct. Here a trained model answers each prompt K
times by sampling; every sample is scored by the task's own metric (the one ``eval`` reports:
execution match on the clinic SQL task, exact match otherwise), and a prompt with a wrong
sample gives a pair: chosen = the reference answer, rejected = the wrong answer the model gave
most often (its likeliest mistake; ties go to the first seen). A prompt whose samples are all
right gives no pair. The records use the TRL conversational layout of the demo's pairs, so
``train --objective dpo --data`` reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.records import Conversation
from tunesmith.data.validate import text_problem
from tunesmith.demo.pairs import pair_record
from tunesmith.errors import UserInputError
from tunesmith.eval.evaluate import answer_matches, default_max_new_tokens, task_of
from tunesmith.eval.generate import SamplingSettings, generate
from tunesmith.eval.text_metrics import normalize_answer

PAIRS_FILE = "pairs.jsonl"
EVAL_PAIRS_FILE = "pairs_eval.jsonl"
REPORT_FILE = "pairs_report.json"

# At 0.7 the sampled mistakes are the model's real ones (a wrong column or join); at 1.0 many
# are noise no greedy decode would write (misspelt names), which teach DPO little.
DEFAULT_SAMPLING = SamplingSettings(temperature=0.7)


def likeliest_mistake(reference: str, answers: Sequence[str], right: Sequence[bool]) -> str | None:
    """The most frequent wrong answer among ``answers`` (ties: the first seen), or None.

    An answer counts as a mistake when the scorer says it is wrong, it is a usable completion
    (not empty, no control character or broken UTF-8: the pair reader refuses those) and its
    text differs from ``reference`` (after
    :func:`~tunesmith.eval.text_metrics.normalize_answer`), so the rejected side is never
    the chosen one.
    """
    ref = normalize_answer(reference)
    counts: dict[str, int] = {}
    for answer, ok in zip(answers, right, strict=True):
        usable = answer.strip() and text_problem(answer) is None
        if not ok and usable and normalize_answer(answer) != ref:
            counts[answer] = counts.get(answer, 0) + 1
    # max() keeps the first of equal counts, and dicts keep insertion order: first seen wins.
    return max(counts, key=counts.__getitem__) if counts else None


@dataclass
class Mined:
    """The pairs mined from one set of prompts and how the samples scored.

    Attributes:
        pairs: pair records (TRL conversational layout, the conversation's meta kept).
        prompts: prompts answered.
        samples_per_prompt: K, the samples drawn per prompt.
        right: samples the task's scorer counted right (of ``prompts * samples_per_prompt``).
        all_right: prompts with no pair because every sample was right.
    """

    pairs: list[dict]
    prompts: int
    samples_per_prompt: int
    right: int
    all_right: int

    def summary(self) -> dict[str, Any]:
        samples = self.prompts * self.samples_per_prompt
        return {
            "prompts": self.prompts,
            "samples_per_prompt": self.samples_per_prompt,
            "samples": samples,
            "right_share": self.right / samples if samples else 0.0,
            "prompts_all_right": self.all_right,
            # Every wrong sample empty, unreadable or the reference's text: no pair either.
            "prompts_without_usable_mistake": self.prompts - self.all_right - len(self.pairs),
            "pairs": len(self.pairs),
        }


def mine_pairs(
    model,
    tokenizer,
    convs: Sequence[Conversation],
    *,
    samples: int = 4,
    sampling: SamplingSettings | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> Mined:
    """Sample ``samples`` answers per conversation and keep each prompt's likeliest mistake.

    Args:
        model: the model whose mistakes to collect (e.g. ``load_adapted(run).model``).
        tokenizer: its tokenizer (the run's own: the chat template it was trained with).
        convs: conversations whose final assistant turn is the reference answer.
        samples: K, answers sampled per prompt.
        sampling: temperature, top-p and seed (default :data:`DEFAULT_SAMPLING`: temperature 0.7, top-p 1, seed 0).
        max_new_tokens: generation limit (default by task, as ``eval``: 64 for the SQL demo).
        batch_size: prompts per generation batch (the K copies of a prompt count each).

    Returns:
        The pairs, in the order of ``convs``, and the counts for the summary.
    """
    from tunesmith.data.render import render_prompt

    if samples < 1:
        raise UserInputError(f"samples must be at least 1, got {samples}")
    task = task_of(convs)
    max_new_tokens = max_new_tokens or default_max_new_tokens(task)
    # Each prompt K times, side by side: the length sort keeps the copies in one batch, and
    # each row draws its own tokens.
    repeated = [c for c in convs for _ in range(samples)]
    rendered = {id(c): render_prompt(tokenizer, c) for c in convs}
    gens = generate(
        model,
        tokenizer,
        [rendered[id(c)] for c in repeated],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        sampling=sampling or DEFAULT_SAMPLING,
    )
    texts = [g.text for g in gens]
    right = answer_matches(task, repeated, texts)
    pairs, all_right = [], 0
    for i, conv in enumerate(convs):
        answers, ok = texts[i * samples : (i + 1) * samples], right[i * samples : (i + 1) * samples]
        if all(ok):
            all_right += 1
            continue
        wrong = likeliest_mistake(conv.answer, answers, ok)
        if wrong is not None:
            pairs.append(pair_record(conv, wrong))
    return Mined(pairs, len(convs), samples, sum(right), all_right)


def reference_conversations(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """The conversations of a data file that end with a reference answer (the first ``limit``).

    Raises:
        UserInputError: the file is missing or holds no conversation with an answer.
    """
    from tunesmith.data.readers import read_files

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    convs = [
        c
        for c in read_files([path])
        if isinstance(c, Conversation) and c.turns[-1].role == "assistant" and c.answer.strip()
    ]
    if not convs:
        raise UserInputError(
            f"{path}: no record with a reference answer (a final assistant turn) to score "
            "samples against"
        )
    return convs[:limit] if limit else convs


def write_onpolicy_pairs(
    source: str | Path,
    out: str | Path,
    *,
    samples: int = 4,
    sampling: SamplingSettings | None = None,
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    n_train: int = 600,
    n_eval: int = 100,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    say: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Mine the pairs of a trained run and write ``pairs.jsonl``, ``pairs_eval.jsonl`` and
    ``pairs_report.json`` into ``out`` (each atomically).

    Without ``data`` and ``eval_data`` the prompts are the clinic demo's SFT split (as
    :func:`tunesmith.demo.pairs.demo_pairs`): its first ``n_train`` training questions give
    ``pairs.jsonl`` and its first ``n_eval`` held-out questions ``pairs_eval.jsonl``, so a
    held-out pair's question was never a training question. With either file, only the
    given files are used (``n_train``/``n_eval`` cap them).

    Returns:
        The report object (also written to ``pairs_report.json``).
    """
    from tunesmith.atomic import write_json, write_jsonl
    from tunesmith.models.adapted import load_adapted

    sampling = sampling or DEFAULT_SAMPLING
    if data is None and eval_data is None:
        from tunesmith.demo.dataset import demo_splits
        from tunesmith.demo.pairs import SFT_DEMO_SIZES

        train, evals = demo_splits(0, *SFT_DEMO_SIZES)
        sets = {"train": train[:n_train], "eval": evals[:n_eval]}
    else:
        sets = {}
        if data is not None:
            sets["train"] = reference_conversations(data, n_train)
        if eval_data is not None:
            sets["eval"] = reference_conversations(eval_data, n_eval)
    loaded = load_adapted(source)
    out = Path(out)
    report: dict[str, Any] = {
        "source": str(source),
        "model": loaded.base_model,
        "samples": samples,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "files": {},
    }
    for name, convs in sets.items():
        say(f"sampling {samples} answers for each of {len(convs)} {name} prompts ...")
        start = time.perf_counter()
        mined = mine_pairs(
            loaded.model,
            loaded.tokenizer,
            convs,
            samples=samples,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        path = write_jsonl(out / (PAIRS_FILE if name == "train" else EVAL_PAIRS_FILE), mined.pairs)
        report[name] = mined.summary() | {"seconds": round(time.perf_counter() - start, 1)}
        report["files"][name] = str(path)
    write_json(out / REPORT_FILE, report)
    return report
