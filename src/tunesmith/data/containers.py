"""File containers (JSONL, JSON, CSV, Parquet) as streams of raw records, one at a time.

Each reader yields ``(position, record)`` where ``record`` is a ``dict`` or an
:class:`~tunesmith.data.validate.Invalid`, and ``position`` is the 1-based line (JSONL, JSON)
or data row (CSV, Parquet). Nothing loads a whole file: JSONL and CSV go line by line, a JSON
array is decoded element by element from a sliding buffer, Parquet batch by batch. What the
keys mean (alpaca, messages, sharegpt) is :mod:`tunesmith.data.readers`'s business.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.data.validate import Invalid
from tunesmith.errors import DataError

RawRecord = tuple[int, "dict[str, Any] | Invalid"]
CONTAINERS = ("jsonl", "json", "csv", "parquet")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Columns whose CSV/Parquet cells may hold JSON text (a flat table cannot nest lists).
_JSON_COLUMNS = ("messages", "conversations", "meta")
_CHUNK = 1 << 20
_PARQUET_BATCH_BYTES = 4 << 20  # decoded bytes per Parquet batch: rows of any width stay cheap
_MAX_CSV_FIELD = 1 << 28


def container_of(path: Path) -> str:
    """The container of ``path``: by extension, else by sniffing the first character."""
    if kind := _EXTENSIONS.get(path.suffix.lower()):
        return kind
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PAR1"):
        return "parquet"
    return "json" if head.startswith(b"[") else "jsonl"


def raw_records(path: str | Path) -> tuple[str, Iterator[RawRecord]]:
    """Open one file: ``(unit, records)`` where unit is ``"line"`` or ``"row"`` (CSV, Parquet).

    Raises:
        DataError: the file is missing or not a file (checked now, not on first iteration).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", str(path))
    if not path.is_file():
        raise DataError("not a file", str(path))
    container = container_of(path)
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "csv": _iter_csv, "parquet": _iter_parquet}
    return ("row" if container in ("csv", "parquet") else "line"), reader[container](path)


def _not_object(file: str, line: int, obj: Any, unit: str = "line") -> Invalid:
    return Invalid(
        file, line, f"a record must be a JSON object, got {type(obj).__name__}", "wrong_type", unit
    )


def _iter_jsonl(path: Path) -> Iterator[RawRecord]:
    file = str(path)
    pairs = _Pairs()
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})"
                yield lineno, Invalid(file, lineno, reason, "invalid_utf8")
                continue
            try:
                obj = json.loads(text, object_pairs_hook=pairs)
            except json.JSONDecodeError as exc:
                pairs.duplicates.clear()
                reason = f"invalid JSON: {exc.msg} (column {exc.colno})"
                yield lineno, Invalid(file, lineno, reason, "invalid_json")
                continue
            obj = pairs.take(file, lineno, obj)
            yield (
                lineno,
                obj if isinstance(obj, (dict, Invalid)) else _not_object(file, lineno, obj),
            )


class _Pairs:
    """``object_pairs_hook`` that builds dicts and remembers keys given twice in one object.

    ``json`` keeps the last value of a repeated key silently; a record with ``"output"`` twice
    is ambiguous, so it is reported as invalid instead of trained on either value.
    """

    def __init__(self) -> None:
        self.duplicates: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                self.duplicates.append(key)
            obj[key] = value
        return obj

    def take(self, file: str, line: int, obj: Any, unit: str = "line") -> Any:
        """``obj``, or an :class:`Invalid` naming the first repeated key seen since last time."""
        dups, self.duplicates = self.duplicates, []
        if dups:
            return Invalid(
                file, line, f"duplicate key {dups[0]!r} in one object", "invalid_json", unit
            )
        return obj


def _incomplete(exc: json.JSONDecodeError, buf: str) -> bool:
    # An error near the end of the buffer may only mean that the element continues in the next
    # chunk: a cut literal ("tr" of "true", "-Infin" of "-Infinity") is reported at its start,
    # an unterminated string at its opening quote. Re-reading costs one more chunk at most.
    return exc.pos >= len(buf) - 10 or exc.msg.startswith("Unterminated string")


def _iter_json(path: Path) -> Iterator[RawRecord]:
    """A JSON array of objects, decoded one element at a time (also accepts bare objects)."""
    file = str(path)
    pairs = _Pairs()
    decoder = json.JSONDecoder(object_pairs_hook=pairs)
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        buf, pos, line, eof = "", 0, 1, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            chunk = fh.read(_CHUNK)
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0  # drop what was consumed (its lines are counted)
            return not eof

        def skip(chars: str) -> str:
            """Advance past ``chars`` and whitespace; return the next character ('' at EOF)."""
            nonlocal pos, line
            while True:
                start = pos
                while pos < len(buf) and (buf[pos].isspace() or buf[pos] in chars):
                    pos += 1
                line += buf.count("\n", start, pos)
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        first = skip("\ufeff")
        in_array = first == "["
        if in_array:
            pos += 1
        while True:
            nxt = skip(",")
            if nxt == "" or (in_array and nxt == "]"):
                if in_array and nxt == "":
                    yield (
                        line,
                        Invalid(
                            file, line, "invalid JSON: the array is not closed", "invalid_json"
                        ),
                    )
                return
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    pairs.duplicates.clear()
                    if not eof and _incomplete(exc, buf):
                        fill()
                        continue
                    at = line + buf.count("\n", pos, exc.pos)
                    reason = f"invalid JSON: {exc.msg}; the rest of the file was skipped"
                    yield at, Invalid(file, at, reason, "invalid_json")
                    return
            start_line = line
            line += buf.count("\n", pos, end)
            pos = end
            obj = pairs.take(file, start_line, obj)
            yield (
                start_line,
                (obj if isinstance(obj, (dict, Invalid)) else _not_object(file, start_line, obj)),
            )


def decode_cells(file: str, row_no: int, row: dict[str, Any]) -> dict[str, Any] | Invalid:
    """Parse the JSON text cells of a flat table row; drop empty cells (= absent fields)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            continue
        if key in _JSON_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                reason = f"invalid JSON in column {key!r}: {exc.msg} (char {exc.pos + 1})"
                return Invalid(file, row_no, reason, "invalid_json", "row")
        out[key] = value
    return out


def _iter_csv(path: Path) -> Iterator[RawRecord]:
    file = str(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # The csv module refuses fields over 128 KiB by default; long answers and JSON message
    # cells can be larger. (The limit is process-wide; raising it only admits more.)
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_CSV_FIELD))
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is reported
    # (by the text checks) instead of aborting the whole file.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            for row_no, row in enumerate(reader, start=1):
                if None in row or None in row.values():
                    reason = "the row's number of fields differs from the header's"
                    yield row_no, Invalid(file, row_no, reason, "invalid_csv", "row")
                    continue
                yield row_no, decode_cells(file, row_no, row)
        except csv.Error as exc:
            yield (
                reader.line_num,
                Invalid(file, reader.line_num, f"invalid CSV: {exc}", "invalid_csv"),
            )


def _iter_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    file = str(path)
    try:
        # pre_buffer=False: pyarrow's read cache otherwise keeps every column chunk read so
        # far until the file is closed, i.e. memory grows with the file.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet: {exc}", file) from exc
    meta = pf.metadata
    row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / max(
        meta.num_rows, 1
    )
    row_no = 0
    batches = pf.iter_batches(
        batch_size=max(1, min(1024, int(_PARQUET_BATCH_BYTES / max(row_bytes, 1))))
    )
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a corrupt data page: pyarrow's OSError, ArrowInvalid...
            raise DataError(f"cannot read Parquet after row {row_no}: {exc}", file) from exc
        if batch is None:
            return
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, decode_cells(file, row_no, row)
