"""Preference data: chosen/rejected pairs and KTO's unpaired examples, parsed and detected.

Formats (detected per record from its keys, like the SFT formats):

- TRL standard: ``{"prompt": str, "chosen": str, "rejected": str}``.
- TRL conversational: ``prompt`` a message list, ``chosen`` / ``rejected`` message lists
  (their assistant turn is the completion); with no ``prompt`` (TRL's implicit prompt) the
  prompt is every turn before the last of ``chosen``.
- LLaMA-Factory alpaca pairs: ``{"instruction", "input"?, "system"?, "chosen", "rejected"}``;
  its ShareGPT pairs: ``{"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}}``.
- Axolotl ``chatml.intel``: ``{"system"?, "question", "chosen", "rejected"}``.
- KTO unpaired: ``{"prompt", "completion", "label": bool}`` (strings or message lists).

Each side is checked as a full conversation (:func:`~tunesmith.data.validate.check_conversation`),
so an empty completion or a bad role order is refused on either side.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.containers import raw_records
from tunesmith.data.readers import SHAREGPT_ROLES, Problem, parse_messages, parse_sharegpt
from tunesmith.data.records import Conversation, Turn
from tunesmith.data.validate import Invalid, check_conversation


class _Prompted:
    """What pairs and unpaired examples share: a prompt, and one side as a conversation."""

    prompt: tuple[Turn, ...]
    source: str
    meta: dict[str, Any]

    def side(self, completion: str) -> Conversation:
        """The prompt followed by ``completion`` as the assistant's answer."""
        return Conversation((*self.prompt, Turn("assistant", completion)), self.source, self.meta)

    @property
    def prompt_text(self) -> str:
        """The prompt turns as one string (the key of eval-leak checks)."""
        return "\n".join(f"{t.role}: {t.content}" for t in self.prompt)


@dataclass(frozen=True)
class PreferencePair(_Prompted):
    """A prompt with a preferred and a dispreferred completion."""

    prompt: tuple[Turn, ...]
    chosen: str
    rejected: str
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class UnpairedExample(_Prompted):
    """KTO's unit: one completion judged desirable or not."""

    prompt: tuple[Turn, ...]
    completion: str
    desirable: bool
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


PreferenceRecord = PreferencePair | UnpairedExample


def detect_preference_format(row: dict[str, Any]) -> str | None:
    """``"pairs"``, ``"unpaired"`` or None, from a record's keys."""
    if "chosen" in row and "rejected" in row:
        return "pairs"
    if "completion" in row and "label" in row:
        return "unpaired"
    return None


def _prompt(row: dict[str, Any], source: str) -> tuple[Turn, ...] | Problem | None:
    """The prompt turns of any layout; None when the layout keeps the prompt in ``chosen``."""
    system = row.get("system")
    if "conversations" in row:  # LLaMA-Factory ShareGPT pairs
        conv = parse_sharegpt({k: row[k] for k in ("conversations", "system") if k in row}, source)
        return conv if isinstance(conv, tuple) else conv.turns
    if "instruction" in row or "question" in row:  # LLaMA-Factory alpaca, Axolotl chatml.intel
        text = row.get("instruction", row.get("question"))
        if not isinstance(text, str):
            return "wrong_type", "the instruction/question must be a string"
        if isinstance(row.get("input"), str) and row["input"].strip():
            text = f"{text}\n\n{row['input']}"
        turns: tuple[Turn, ...] = (Turn("user", text),)
    elif "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            turns = (Turn("user", prompt),)
        elif isinstance(prompt, list):
            conv = parse_messages({"messages": prompt}, source)
            if isinstance(conv, tuple):
                return conv
            turns = conv.turns
        else:
            return (
                "wrong_type",
                f"field 'prompt' must be a string or a message list, got {type(prompt).__name__}",
            )
    else:
        return None
    if isinstance(system, str) and system and (not turns or turns[0].role != "system"):
        turns = (Turn("system", system), *turns)
    return turns


def _completion(value: Any, key: str, source: str) -> tuple[tuple[Turn, ...], str] | Problem:
    """``(turns before the answer, answer)`` from a string, a message, or a message list."""
    if isinstance(value, str):
        return (), value
    if isinstance(value, dict):  # LLaMA-Factory ShareGPT: one {"from", "value"} message
        role = SHAREGPT_ROLES.get(str(value.get("from", value.get("role", ""))).lower(), "")
        text = value.get("value", value.get("content"))
        if role != "assistant" or not isinstance(text, str):
            return "wrong_type", f"field {key!r} must be an assistant message"
        return (), text
    if isinstance(value, list):
        conv = parse_messages({"messages": value}, source)
        if isinstance(conv, tuple):
            return conv
        if not conv.turns or conv.turns[-1].role != "assistant":
            return "bad_role_order", f"field {key!r} must end with an assistant message"
        return conv.turns[:-1], conv.turns[-1].content
    return "wrong_type", f"field {key!r} must be a string or messages, got {type(value).__name__}"


def parse_preference(row: dict[str, Any], source: str) -> PreferenceRecord | Problem:
    """One record of any layout above as a pair or an unpaired example, or the problem."""
    kind = detect_preference_format(row)
    if kind is None:
        return (
            "unknown_format",
            "expected 'chosen'/'rejected' (pairs) or 'completion'/'label' (KTO)",
        )
    prompt = _prompt(row, source)
    if isinstance(prompt, tuple) and prompt and isinstance(prompt[0], str):
        return prompt  # a Problem
    keys = ("chosen", "rejected") if kind == "pairs" else ("completion",)
    sides = []
    for key in keys:
        got = _completion(row[key], key, source)
        if isinstance(got[0], str):
            return got  # type: ignore[return-value]
        sides.append(got)
    if prompt is None:  # TRL's implicit prompt: the turns before chosen's answer
        prompt = sides[0][0]
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    if kind == "pairs":
        record: PreferenceRecord = PreferencePair(prompt, sides[0][1], sides[1][1], source, meta)
        texts = [record.chosen, record.rejected]
    else:
        if not isinstance(row["label"], bool):
            return "wrong_type", "field 'label' must be true or false"
        record = UnpairedExample(prompt, sides[0][1], row["label"], source, meta)
        texts = [record.completion]
    for text, key in zip(texts, keys, strict=True):
        if problem := check_conversation(record.side(text)):
            return problem[0], f"{key}: {problem[1]}"
    return record


def read_preference_file(path: str | Path) -> Iterator[PreferenceRecord | Invalid]:
    """Every record of a JSONL/JSON/CSV/Parquet file as a preference record or :class:`Invalid`."""
    unit, records = raw_records(path)
    for pos, raw in records:
        if isinstance(raw, Invalid):
            yield raw
            continue
        source = f"{path}:{pos}" if unit == "line" else f"{path}:{unit} {pos}"
        parsed = parse_preference(raw, source)
        if isinstance(parsed, tuple):
            yield Invalid(str(path), pos, parsed[1], parsed[0], unit)
        else:
            yield parsed


def is_preference_file(path: str | Path) -> bool:
    """Whether the first well-formed record of ``path`` is a pair or a KTO example."""
    _, records = raw_records(path)
    for _, raw in records:
        if not isinstance(raw, Invalid):
            return detect_preference_format(raw) is not None
    return False


def sides(record: PreferenceRecord) -> list[Conversation]:
    """Each completion of a record as a conversation, its source saying which side it is."""
    if isinstance(record, PreferencePair):
        named = [("chosen", record.chosen), ("rejected", record.rejected)]
    else:
        named = [("desirable" if record.desirable else "undesirable", record.completion)]
    return [
        Conversation(record.side(text).turns, f"{record.source} ({name})", record.meta)
        for name, text in named
    ]
