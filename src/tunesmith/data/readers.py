"""Instruction-data formats: one parser per format, auto-detected per file.

- ``alpaca``: ``{"instruction", "input"?, "output", "system"?}``
- ``messages`` (OpenAI / ChatML): ``{"messages": [{"role", "content"}, ...]}``; ``content``
  may also be OpenAI's list of ``{"type": "text", "text"}`` parts.
- ``sharegpt``: ``{"conversations": [{"from", "value"}, ...], "system"?}`` with ``from`` in
  human/gpt/system (user/assistant also accepted).

Every format may carry a ``meta`` object, kept unchanged on the :class:`Conversation`. The
readers check structure (fields present, of the right type); :func:`read_file` then applies
:func:`~tunesmith.data.validate.check_conversation` so each yielded record is either a usable
conversation or an :class:`~tunesmith.data.validate.Invalid` saying where and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.data.containers import RawRecord, raw_records
from tunesmith.data.records import Conversation, Turn
from tunesmith.data.sources import ReadOptions, rename_columns
from tunesmith.data.validate import Invalid, check_conversation
from tunesmith.errors import ConfigError, DataError

Problem = tuple[str, str]  # (kind, reason)
FORMATS = ("alpaca", "messages", "sharegpt")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}


def _text_field(row: dict[str, Any], key: str, *, required: bool) -> str | Problem | None:
    value = row.get(key)
    if value is None:
        return ("missing_field", f"missing field {key!r}") if required else None
    if not isinstance(value, str):
        return "wrong_type", f"field {key!r} must be a string, got {type(value).__name__}"
    return value


def _meta(row: dict[str, Any]) -> dict[str, Any] | Problem:
    meta = row.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        return "wrong_type", f"field 'meta' must be an object, got {type(meta).__name__}"
    return meta


def _turn_list(row: dict[str, Any], key: str) -> list[Any] | Problem:
    value = row.get(key)
    if value is None:
        return "missing_field", f"missing field {key!r}"
    if not isinstance(value, list):
        return "wrong_type", f"field {key!r} must be a list, got {type(value).__name__}"
    return value


def parse_alpaca(row: dict[str, Any], source: str) -> Conversation | Problem:
    """``instruction`` (+ ``input`` after a blank line) is the user turn; ``output`` the answer."""
    fields = {}
    for key, required in (
        ("instruction", True),
        ("input", False),
        ("output", True),
        ("system", False),
    ):
        value = _text_field(row, key, required=required)
        if isinstance(value, tuple):
            return value
        fields[key] = value
    meta = _meta(row)
    if isinstance(meta, tuple):
        return meta
    prompt = fields["instruction"]
    if fields["input"] and fields["input"].strip():
        prompt = f"{prompt}\n\n{fields['input']}"
    turns = [Turn("user", prompt), Turn("assistant", fields["output"])]
    if fields["system"]:
        turns.insert(0, Turn("system", fields["system"]))
    return Conversation(tuple(turns), source, meta)


def _content(value: Any, where: str) -> str | Problem:
    if isinstance(value, str):
        return value
    # OpenAI's multi-part content: keep the text parts, refuse anything else (images, audio).
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    if value is None:
        return "missing_field", f"missing {where}"
    return "wrong_type", f"{where} must be a string, got {type(value).__name__}"


def _parse_turns(
    row: dict[str, Any],
    source: str,
    key: str,
    role_key: str,
    text_key: str,
    roles: Callable[[str], str],
) -> Conversation | Problem:
    items = _turn_list(row, key)
    if isinstance(items, tuple):
        return items
    meta = _meta(row)
    if isinstance(meta, tuple):
        return meta
    turns = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            return "wrong_type", f"{key}[{i}] must be an object, got {type(item).__name__}"
        role = item.get(role_key)
        if not isinstance(role, str):
            problem = "missing_field" if role is None else "wrong_type"
            return problem, f"{key}[{i}] needs a string {role_key!r}"
        text = _content(item.get(text_key), f"{key}[{i}].{text_key}")
        if isinstance(text, tuple):
            return text
        turns.append(Turn(roles(role), text))  # type: ignore[arg-type]
    return Conversation(tuple(turns), source, meta)


def parse_messages(row: dict[str, Any], source: str) -> Conversation | Problem:
    """OpenAI/ChatML ``messages``: roles system, user, assistant; any number of turns."""
    return _parse_turns(row, source, "messages", "role", "content", str)


def parse_sharegpt(row: dict[str, Any], source: str) -> Conversation | Problem:
    """ShareGPT ``conversations`` with ``from``/``value``; an optional top-level ``system``."""
    conv = _parse_turns(
        row, source, "conversations", "from", "value", lambda r: SHAREGPT_ROLES.get(r.lower(), r)
    )
    if isinstance(conv, tuple):
        return conv
    system = _text_field(row, "system", required=False)
    if isinstance(system, tuple):
        return system
    if system and (not conv.turns or conv.turns[0].role != "system"):
        conv = Conversation((Turn("system", system), *conv.turns), source, conv.meta)
    return conv


PARSERS: dict[str, Callable[[dict[str, Any], str], Conversation | Problem]] = {
    "alpaca": parse_alpaca,
    "messages": parse_messages,
    "sharegpt": parse_sharegpt,
}


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a record's keys announce, or None when they fit none."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


def read_file(
    path: str | Path, format: str | None = None, columns: dict[str, str] | None = None
) -> Iterator[Conversation | Invalid]:
    """Stream one file's records as validated conversations or :class:`Invalid` records.

    Args:
        path: A ``.jsonl``, ``.json`` (array), ``.csv``/``.tsv`` or ``.parquet`` file.
        format: ``alpaca``, ``messages`` or ``sharegpt``; None detects it from the first
            record whose keys fit a format, then holds it for the rest of the file.
        columns: ``{field: column}``: columns renamed to format fields first (``--columns``).

    Raises:
        DataError: the file does not exist (bad records are yielded, not raised).
    """
    if format is not None and format not in PARSERS:
        raise ConfigError("format", format, " / ".join(FORMATS))
    unit, records = raw_records(path)
    yield from parse_records(str(path), unit, rename_columns(records, columns or {}), format)


def parse_records(
    label: str, unit: str, records: Iterable[RawRecord], format: str | None = None
) -> Iterator[Conversation | Invalid]:
    """Raw ``(position, record)`` pairs of one source as conversations or :class:`Invalid`.

    Args:
        label: The file (or dataset) the positions refer to.
        unit: How positions count: ``line``, ``row`` (1-based) or ``index`` (0-based,
            a dataset's row index).
        records: The raw records, e.g. from :func:`~tunesmith.data.containers.raw_records`.
        format: Forced format, or None to detect it from the first record that fits one.
    """
    fmt = format
    for pos, raw in records:
        if isinstance(raw, Invalid):
            yield raw
            continue
        source = f"{label}:{pos}" if unit == "line" else f"{label}:{unit} {pos}"
        fmt = fmt or detect_format(raw)
        if fmt is None:
            reason = "unknown format: expected a 'messages', 'conversations' or 'instruction'/'output' field"
            yield Invalid(label, pos, reason, "unknown_format", unit)
            continue
        parsed = PARSERS[fmt](raw, source)
        problem = parsed if isinstance(parsed, tuple) else check_conversation(parsed)
        if problem:
            yield Invalid(label, pos, problem[1], problem[0], unit)
        else:
            yield parsed  # type: ignore[misc]


def read_files(
    paths: Iterable[str | Path],
    format: str | None = None,
    options: ReadOptions | None = None,
) -> Iterator[Conversation | Invalid]:
    """Every ``--data`` entry in order: files (each detects its own format) and datasets.

    Args:
        paths: Files, ``datasets`` folders or hub ids (:mod:`tunesmith.data.sources`).
        format: Force a format instead of detecting it per source.
        options: Split, revision, column mapping and streaming (:class:`ReadOptions`).
    """
    options = options or ReadOptions()
    for path in paths:
        src = None
        if not Path(path).is_file():
            try:
                src = options.resolve(str(path))
            except DataError:
                if Path(path).exists():
                    raise  # a folder that holds no dataset; a missing file: read_file says so
        if src is None or src.kind == "file":
            yield from read_file(path, format, options.columns)
        else:
            from tunesmith.data.hub import read_dataset

            yield from read_dataset(src, format, options)
