"""Cleaning and tokenizing preference data: the SFT guarantees, held on both sides of a pair.

:func:`clean_preferences` drops exact duplicate records, pairs whose chosen equals their
rejected completion (no preference to learn), and training records whose prompt is also an
eval prompt (a leak would inflate the held-out preference accuracy). :func:`tokenize_pair`
renders each side with the chat template and checks the mask on both: a non-empty trained
completion that ends with the trained end-of-turn token, and one shared prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tunesmith.data.preference import PreferencePair, PreferenceRecord, UnpairedExample
from tunesmith.data.render import IGNORE_INDEX, render_example
from tunesmith.errors import DataError


@dataclass
class PreferenceCleanReport:
    """What :func:`clean_preferences` removed (the keys of ``clean_report.json``)."""

    input_records: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    identical_sides: int = 0
    eval_leaks: int = 0
    removed: list[dict[str, str]] = field(default_factory=list)  # {source, reason}

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _key(record: PreferenceRecord) -> tuple:
    if isinstance(record, PreferencePair):
        return ("pair", record.prompt, record.chosen.strip(), record.rejected.strip())
    return ("unpaired", record.prompt, record.completion.strip(), record.desirable)


def clean_preferences(
    records: Iterable[PreferenceRecord], eval_records: Sequence[PreferenceRecord] = ()
) -> tuple[list[PreferenceRecord], PreferenceCleanReport]:
    """The records worth training on, first occurrence kept, and the report of the rest."""
    report = PreferenceCleanReport()
    eval_prompts = {r.prompt_text.strip() for r in eval_records}
    seen: set[tuple] = set()
    kept: list[PreferenceRecord] = []
    for record in records:
        report.input_records += 1
        if isinstance(record, PreferencePair) and record.chosen.strip() == record.rejected.strip():
            reason, report.identical_sides = "chosen equals rejected", report.identical_sides + 1
        elif _key(record) in seen:
            reason, report.exact_duplicates = "exact duplicate", report.exact_duplicates + 1
        elif record.prompt_text.strip() in eval_prompts:
            reason, report.eval_leaks = "prompt also in the eval set", report.eval_leaks + 1
        else:
            seen.add(_key(record))
            kept.append(record)
            continue
        report.removed.append({"source": record.source, "reason": reason})
    report.kept = len(kept)
    return kept, report


def _split(tokenizer, record: PreferenceRecord, completion: str, seq_len: int, eos: int):
    """(prompt ids, completion ids) of one side; the mask checks of SFT data, per side."""
    r = render_example(tokenizer, record.side(completion), max_len=seq_len)
    trained = [i for i, t in enumerate(r.labels) if t != IGNORE_INDEX]
    if not trained:
        raise DataError(
            f"a completion has no trained token (longer than --seq-len {seq_len}?)",
            record.source or None,
        )
    if r.input_ids[trained[-1]] != eos:
        raise DataError(
            f"the end-of-turn token {tokenizer.eos_token!r} is not trained at the end of a completion: "
            "the model would not learn to stop; check the chat template or --seq-len",
            record.source or None,
        )
    # Tokens after the last trained one (a template's trailing newline) are not scored.
    return r.input_ids[: trained[0]], r.input_ids[trained[0] : trained[-1] + 1]


def tokenize_pair(
    tokenizer, pair: PreferencePair, seq_len: int
) -> tuple[list[int], list[int], list[int]]:
    """``(prompt, chosen, rejected)`` token ids of a pair, both sides' masks checked.

    Raises:
        DataError: a side has no trained token, its end-of-turn token is untrained, or the two
            sides render different prompts (a template that rewrites the prompt per answer).
    """
    eos = tokenizer.eos_token_id
    prompt, chosen = _split(tokenizer, pair, pair.chosen, seq_len, eos)
    prompt_r, rejected = _split(tokenizer, pair, pair.rejected, seq_len, eos)
    if prompt != prompt_r:
        raise DataError(
            "the chosen and rejected sides render different prompts", pair.source or None
        )
    return prompt, chosen, rejected


def tokenize_unpaired(
    tokenizer, example: UnpairedExample, seq_len: int
) -> tuple[list[int], list[int]]:
    """``(prompt, completion)`` token ids of a KTO example, its mask checked."""
    return _split(tokenizer, example, example.completion, seq_len, tokenizer.eos_token_id)
