"""Run :class:`~tunesmith.data.prepare.Preparer` in worker processes, in order, streaming.

The per-record work (normalize, validate, filter, hash, MinHash) is about 60% of cleaning's
CPU time and needs no shared state; the decisions (duplicates, leaks) need all previous
records and stay in the calling process. Records travel in chunks; at most
``2 * workers`` chunks are in flight, so memory stays flat however long the input is, and
results come back in input order, so the output is the same as with ``workers=0``.

Workers are started with ``spawn`` (not ``fork``): the caller may be ``train`` with torch
and its threads already loaded, which ``fork`` does not copy safely.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import TypeVar

from tunesmith.data.options import CleanOptions
from tunesmith.data.prepare import Prepared, Preparer
from tunesmith.data.records import Conversation
from tunesmith.data.validate import Invalid
from tunesmith.errors import WorkFailed

S = TypeVar("S")
_CHUNK = 256
_worker: Preparer | None = None


def _init(options: CleanOptions) -> None:
    global _worker
    _worker = Preparer(options)


def _prepare_chunk(records: list[Conversation | Invalid]) -> list[Prepared | Invalid]:
    assert _worker is not None, "worker not initialized"
    return [r if isinstance(r, Invalid) else _worker(r) for r in records]


def prepared_stream(
    pairs: Iterable[tuple[Conversation | Invalid, S]], preparer: Preparer
) -> Iterator[tuple[Prepared | Invalid, S]]:
    """``(record, tag)`` pairs in, ``(prepared record, tag)`` out, in the same order.

    Uses ``preparer.options.workers`` processes; in-process when that is 0 or when a
    tokenizer is set (tokenizers are large to ship to workers and run their own threads).
    """
    workers = preparer.options.workers
    if workers <= 0 or preparer.tokenizer is not None:
        for record, tag in pairs:
            yield (record if isinstance(record, Invalid) else preparer(record)), tag
        return
    pairs = iter(pairs)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(preparer.options,),
    )
    inflight: deque[tuple[list[S], Future]] = deque()
    try:
        while True:
            while len(inflight) < 2 * workers and (chunk := list(islice(pairs, _CHUNK))):
                records, tags = zip(*chunk, strict=True)
                inflight.append((list(tags), pool.submit(_prepare_chunk, list(records))))
            if not inflight:
                return
            tags, future = inflight.popleft()
            try:
                results = future.result()
            except BrokenProcessPool as exc:
                raise WorkFailed(
                    "clean's worker processes died (with workers > 0, a script must call clean() "
                    "under `if __name__ == '__main__':`, as spawned workers re-import it)"
                ) from exc
            yield from zip(results, tags, strict=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
