"""What ``--data`` names: a file, a ``datasets`` folder, or a hub dataset id; and column mapping.

A path that exists is a file (JSONL, JSON, CSV, Parquet) or a folder: a ``save_to_disk``
folder (``dataset_info.json`` + ``state.json``, or ``dataset_dict.json``) or a folder of data
shards (Parquet, Arrow, JSONL, CSV) that ``datasets.load_dataset`` reads. Otherwise a string
shaped like ``org/name[:config][@split]`` is a hub dataset id. The split comes from ``@split``,
else ``--data-split``, else ``train``.

``--columns instruction=question,output=answer`` maps a dataset's own column names onto the
fields of the known formats (alpaca, messages, sharegpt): each raw record is renamed before
its format is detected, for files and datasets alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunesmith.data.validate import Invalid
from tunesmith.errors import ConfigError, DataError

SourceKind = Literal["file", "disk", "folder", "hub"]
DEFAULT_SPLIT = "train"
# With --streaming left on auto, data larger than this is streamed (bytes on disk; for a hub
# dataset, the size its card announces).
AUTO_STREAM_BYTES = 2 * 1024**3
# Fields a column may be mapped onto: those of the formats readers.py parses.
FIELDS = ("instruction", "input", "output", "system", "messages", "conversations", "meta")
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq", ".arrow")
_HUB_ID = re.compile(
    r"^(?P<name>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.\-\[\]:%+]+))?$"
)
_DATA_SHARDS = (".parquet", ".arrow", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class DataSource:
    """One resolved ``--data`` entry.

    Attributes:
        kind: ``file``, ``disk`` (a ``save_to_disk`` folder), ``folder`` (data shards) or
            ``hub`` (a dataset id, loaded through the ``datasets`` cache or the hub).
        path: The file or folder path, or the hub id ``org/name``.
        config: The dataset configuration (hub ``:config``), if any.
        split: The split to read (not used for files).
        revision: A hub revision (branch, tag or commit), if any.
    """

    kind: SourceKind
    path: str
    config: str | None = None
    split: str = DEFAULT_SPLIT
    revision: str | None = None

    @property
    def label(self) -> str:
        """How reports name this source: the file path, or ``name[:config]@split``."""
        if self.kind == "file":
            return self.path
        return self.path + (f":{self.config}" if self.config else "") + f"@{self.split}"


def _is_disk_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()
    )


def resolve_source(
    spec: str, *, split: str | None = None, revision: str | None = None
) -> DataSource:
    """Say what a ``--data`` string names; nothing is loaded.

    Args:
        spec: A path, or ``org/name[:config][@split]`` (a folder path may carry ``@split``).
        split: ``--data-split``: the split when ``spec`` names none.
        revision: ``--data-revision`` for hub datasets.

    Raises:
        DataError: the path does not exist and ``spec`` is not shaped like a hub id, or a
            folder holds no dataset.
    """
    path = Path(spec)
    if path.is_file():
        return DataSource("file", spec)
    base, _, at_split = spec.rpartition("@") if "@" in spec else (spec, "", "")
    chosen = at_split or split or DEFAULT_SPLIT
    folder = Path(base)
    if folder.is_dir():
        if _is_disk_dataset(folder):
            return DataSource("disk", base, split=chosen)
        if not any(p.suffix in _DATA_SHARDS for p in folder.rglob("*") if p.is_file()):
            raise DataError("folder holds no dataset (save_to_disk files or data shards)", base)
        return DataSource("folder", base, split=chosen)
    m = _HUB_ID.match(spec)
    if m is None or m["name"].lower().endswith(_FILE_SUFFIXES) or spec.startswith((".", "/")):
        raise DataError(f"data file not found: {spec}")
    return DataSource("hub", m["name"], m["config"], m["split"] or split or DEFAULT_SPLIT, revision)


def source_bytes(src: DataSource) -> int | None:
    """The data's size in bytes where it is cheap to know (local files), else None."""
    path = Path(src.path)
    if src.kind == "file":
        return path.stat().st_size
    if src.kind in ("disk", "folder"):
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def wants_streaming(sources: Iterable[DataSource], streaming: bool | None) -> bool:
    """``--streaming`` as given, or on auto: stream when the data is over AUTO_STREAM_BYTES."""
    if streaming is not None:
        return streaming
    sizes = [source_bytes(s) for s in sources]
    return sum(s or 0 for s in sizes) > AUTO_STREAM_BYTES


def parse_columns(text: str | None) -> dict[str, str]:
    """``"instruction=question,output=answer"`` -> ``{"instruction": "question", ...}``.

    Raises:
        ConfigError: an entry is not ``FIELD=COLUMN`` or names an unknown field.
    """
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for entry in text.split(","):
        field, sep, column = (part.strip() for part in entry.partition("="))
        if not sep or not field or not column:
            raise ConfigError("columns", text, "FIELD=COLUMN entries separated by commas")
        if field not in FIELDS:
            raise ConfigError("columns", text, f"fields among {', '.join(FIELDS)} (got {field!r})")
        mapping[field] = column
    return mapping


def rename_columns(
    records: Iterator[tuple[int, dict | Invalid]], mapping: dict[str, str]
) -> Iterator[tuple[int, dict | Invalid]]:
    """Rename each raw record's mapped columns to their fields (the originals are dropped)."""
    if not mapping:
        yield from records
        return
    for pos, raw in records:
        if isinstance(raw, dict):
            raw = dict(raw)
            for field, column in mapping.items():
                if column in raw:
                    raw[field] = raw.pop(column)
        yield pos, raw


@dataclass(frozen=True)
class ReadOptions:
    """How to read ``--data`` entries beyond their format (the flags of the same names).

    Attributes:
        split: ``--data-split``: the split of datasets whose spec names none.
        revision: ``--data-revision``: the hub revision.
        columns: ``--columns`` as a ``{field: column}`` mapping (:func:`parse_columns`).
        streaming: Read datasets as a stream instead of preparing them whole first.
    """

    split: str | None = None
    revision: str | None = None
    columns: dict[str, str] | None = None
    streaming: bool = False

    def resolve(self, spec: str) -> DataSource:
        return resolve_source(spec, split=self.split, revision=self.revision)
