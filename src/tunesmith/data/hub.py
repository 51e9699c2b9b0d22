"""Datasets through the ``datasets`` library: hub ids, ``save_to_disk`` folders, shard folders.

Every kind goes through :func:`open_dataset` and then the same readers, validation and
cleaning as files (:func:`read_dataset`). Records are named ``name[:config]@split`` plus their
0-based row index (``dataset[i]``), so the clean report says where each dropped record is.

Streaming (``streaming=True``) reads rows as they arrive (``datasets``' ``IterableDataset``)
instead of downloading and converting the whole split to Arrow first; a ``save_to_disk``
folder is already Arrow on disk and is read through ``to_iterable_dataset``. Offline
(``HF_HUB_OFFLINE=1``) a hub id loads from the local ``datasets`` cache, or fails with one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tunesmith.data.containers import RawRecord, decode_cells, raw_records
from tunesmith.data.records import Conversation
from tunesmith.data.sources import DataSource, ReadOptions, rename_columns
from tunesmith.data.validate import Invalid
from tunesmith.errors import DataError

_STREAMED = (".parquet", ".jsonl", ".json", ".csv")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_dataset(src: DataSource, streaming: bool = False) -> Any:
    """The split ``src`` names, as a ``datasets.Dataset`` (or ``IterableDataset`` streaming).

    Raises:
        DataError: the dataset is not cached and the hub cannot be reached, does not exist,
            or has no such split or configuration (one line naming it).
    """
    import datasets

    try:
        if src.kind == "disk":
            ds = datasets.load_from_disk(src.path)
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(f"no split {src.split!r}; it has {', '.join(ds)}", src.path)
                ds = ds[src.split]
            return ds.to_iterable_dataset() if streaming else ds
        return datasets.load_dataset(
            src.path, src.config, split=src.split, revision=src.revision, streaming=streaming
        )
    except ConnectionError as exc:  # includes huggingface_hub's OfflineModeIsEnabled
        if src.kind == "hub":
            raise DataError(
                f"dataset {src.path} is not in the local cache and the hub cannot be reached"
            ) from exc
        raise DataError(_first_line(exc), src.label) from exc
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise DataError(f"dataset {src.path} not found: {_first_line(exc)}") from exc
    except (ValueError, FileNotFoundError, KeyError) as exc:  # unknown split or config
        raise DataError(_first_line(exc), src.label) from exc


def split_files(src: DataSource) -> list[str] | None:
    """The data files of a shard folder's split (``datasets``' own split patterns), or None
    when some file is not one :mod:`~tunesmith.data.containers` streams (e.g. Arrow)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(src.path), base_path=src.path)
    except Exception as exc:  # datasets' EmptyDatasetError, FileNotFoundError ...
        raise DataError(_first_line(exc), src.path) from exc
    if src.split not in files:
        raise DataError(f"no split {src.split!r}; it has {', '.join(files)}", src.path)
    chosen = [str(f) for f in files[src.split]]
    return chosen if all(f.endswith(_STREAMED) for f in chosen) else None


def dataset_records(src: DataSource, streaming: bool = False) -> Iterator[RawRecord]:
    """``(row index, record)`` of each row; JSON-text cells decoded, empty cells dropped.

    A shard folder streamed is read file by file with tunesmith's own container readers:
    ``datasets``' local Parquet streaming holds a file's buffers until it is done, so memory
    would grow with the shard.
    """
    label = src.label
    if streaming and src.kind == "folder" and (files := split_files(src)) is not None:
        index = 0
        for file in files:
            for _, raw in raw_records(file)[1]:
                yield index, raw  # an Invalid names its shard file and line itself
                index += 1
        return
    for index, row in enumerate(open_dataset(src, streaming)):
        raw = decode_cells(label, index, row)
        if isinstance(raw, Invalid):  # decode_cells counts rows; a dataset counts indices
            raw = Invalid(raw.file, index, raw.reason, raw.kind, "index")
        yield index, raw


def read_dataset(
    src: DataSource, format: str | None = None, options: ReadOptions | None = None
) -> Iterator[Conversation | Invalid]:
    """:func:`~tunesmith.data.readers.read_file` for a dataset: validated conversations."""
    from tunesmith.data.readers import parse_records

    options = options or ReadOptions()
    records = rename_columns(dataset_records(src, options.streaming), options.columns or {})
    yield from parse_records(src.label, "index", records, format)
