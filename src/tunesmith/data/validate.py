"""Record validation: what makes a conversation unusable, and when too many bad records is fatal.

Readers turn structural problems (invalid JSON or UTF-8, a missing or wrong-typed field) into
:class:`Invalid` records; :func:`check_conversation` adds the semantic checks that are the same
for every format (unknown role, role order, empty answer, control characters). :class:`Tally`
applies the ``on_error`` policy over a stream without holding the stream.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from tunesmith.data.records import ROLES, Conversation
from tunesmith.errors import ConfigError, DataError

OnError = Literal["skip", "fail"]

# C0 controls except tab/newline/carriage return, DEL, and C1 controls: they never belong in
# chat text and often mark binary junk or a mis-decoded file. Lone surrogates are what
# ``errors="surrogateescape"`` leaves for bytes that are not valid UTF-8.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class Invalid:
    """A record that cannot be used, with where it is and why.

    Attributes:
        file: The input file.
        line: 1-based line of the record's start (JSONL, JSON) or 1-based data row (CSV, Parquet).
        reason: One readable sentence, e.g. ``"missing field 'output'"``.
        kind: A stable category for counting: ``invalid_json``, ``invalid_utf8``,
            ``missing_field``, ``wrong_type``, ``unknown_format``, ``unknown_role``,
            ``bad_role_order``, ``empty_answer``, ``empty_prompt``, ``control_characters``.
        unit: ``"line"``, ``"row"`` (1-based) or ``"index"`` (a dataset's 0-based row
            index, as in ``dataset[i]``): how ``line`` counts.
    """

    file: str
    line: int
    reason: str
    kind: str
    unit: str = "line"

    @property
    def where(self) -> str:
        return (
            f"{self.file}:{self.line}"
            if self.unit == "line"
            else f"{self.file}:{self.unit} {self.line}"
        )

    def to_json(self) -> dict[str, Any]:
        row = {"file": self.file, "line": self.line, "reason": self.reason, "kind": self.kind}
        if self.unit == "index":  # a dataset: its name@split and the row index, spelled out
            row.update(dataset_location(self.file, self.line))
        return row


def dataset_location(label: str, index: int) -> dict[str, Any]:
    """``{"dataset", "split", "row"}`` of a dataset record labelled ``name[:config]@split``."""
    name, _, split = label.rpartition("@")
    return {"dataset": name, "split": split, "row": index}


def text_problem(text: str) -> tuple[str, str] | None:
    """``(kind, reason)`` when ``text`` holds bytes that were not UTF-8 or control characters."""
    if m := _SURROGATE.search(text):
        byte = ord(m.group()) - 0xDC00
        return "invalid_utf8", f"invalid UTF-8 (byte 0x{byte:02x} at char {m.start()})"
    if m := _CONTROL.search(text):
        return "control_characters", f"control character U+{ord(m.group()):04X} at char {m.start()}"
    return None


def check_conversation(conv: Conversation) -> tuple[str, str] | None:
    """Return ``(kind, reason)`` for the first problem in ``conv``, or None when it is usable.

    A usable conversation has an optional leading system turn, then turns that alternate
    user/assistant starting with user, and ends with a non-empty assistant turn.
    """
    turns = conv.turns
    for i, t in enumerate(turns):
        if t.role not in ROLES:
            return "unknown_role", f"unknown role {t.role!r} in turn {i + 1}"
    for i, t in enumerate(turns):
        if problem := text_problem(t.content):
            kind, reason = problem
            return kind, f"{reason} in turn {i + 1} ({t.role})"
    body = turns[1:] if turns and turns[0].role == "system" else turns
    if not body:
        return "bad_role_order", "no user or assistant turn"
    for i, t in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if t.role != expected:
            pos = i + 1 + (len(turns) - len(body))
            return "bad_role_order", f"turn {pos} is {t.role!r}, expected {expected!r}"
    if body[-1].role != "assistant":
        return "bad_role_order", "the last turn must be 'assistant'"
    if not body[-1].content.strip():
        return "empty_answer", "the assistant answer is empty"
    for i, t in enumerate(body):
        if not t.content.strip():
            kind = "empty_answer" if t.role == "assistant" else "empty_prompt"
            return kind, f"turn {i + 1 + len(turns) - len(body)} ({t.role}) is empty"
    return None


@dataclass
class Tally:
    """Counts good and bad records over a stream and applies the ``on_error`` policy.

    Args:
        on_error: ``"skip"`` drops bad records (they are still reported); ``"fail"`` raises
            :class:`DataError` at the first one.
        max_invalid_share: Even with ``"skip"``, :meth:`finish` fails when more than this share
            of all records is bad: a file that is mostly broken is more likely the wrong file
            (or the wrong ``--format``) than a few bad rows.
    """

    on_error: OnError = "skip"
    max_invalid_share: float = 0.2
    total: int = 0
    invalid: list[Invalid] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise ConfigError("on_error", self.on_error, "'skip' or 'fail'")
        if not 0.0 <= self.max_invalid_share <= 1.0:
            raise ConfigError("max_invalid_share", self.max_invalid_share, "a share in [0, 1]")

    def good(self) -> None:
        self.total += 1

    def bad(self, record: Invalid) -> None:
        self.total += 1
        self.invalid.append(record)
        self.by_kind[record.kind] += 1
        if self.on_error == "fail":
            raise DataError(f"{record.reason} (--on-error fail)", record.file, record.line)

    def finish(self) -> None:
        """Raise :class:`DataError` when nothing valid was read or too many records were bad."""
        n_bad = len(self.invalid)
        if self.total == 0:
            raise DataError("no records found in the input")
        if n_bad == self.total:
            first = self.invalid[0]
            raise DataError(
                f"no valid records: all {n_bad} are invalid; first: {first.where}: {first.reason}"
            )
        if n_bad > self.max_invalid_share * self.total:
            kinds = ", ".join(f"{k} {n}" for k, n in self.by_kind.most_common())
            raise DataError(
                f"{n_bad} of {self.total} records are invalid ({kinds}), more than the allowed "
                f"share {self.max_invalid_share:g}; first: {self.invalid[0].where}: "
                f"{self.invalid[0].reason}"
            )
