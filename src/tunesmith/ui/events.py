"""Live updates of a run page: server-sent events tailing ``metrics.jsonl`` and the state.

The tail reads only the bytes appended since the last poll; a file that shrank (``--resume``
drops the rows past its checkpoint) is read again from the start, announced by a ``reset``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tunesmith.rundir import RunDir
from tunesmith.ui.runs import curves

POLL_S = 0.5
SETTLED = ("finished", "failed", "interrupted")


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


class MetricsTail:
    """New complete lines of a JSONL file since the previous call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> tuple[bool, list[dict]]:
        """``(reset, rows)``: ``reset`` when the file shrank and rows start over."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return False, []
        reset = size < self.offset
        if reset:
            self.offset = 0
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self.offset += end
        rows = []
        for line in chunk[:end].splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return reset, rows


async def run_events(
    run: RunDir, state: Callable[[], str], disconnected: Callable[[], object]
) -> AsyncIterator[str]:
    """``metrics`` (new curve rows), ``reset`` and ``state`` events until the run settles.

    Args:
        run: the run directory.
        state: the run's state as the UI reports it (``starting`` before its lock is taken).
        disconnected: an awaitable factory, true once the client went away.
    """
    tail = MetricsTail(run.metrics_path)
    last, settled_polls = None, 0
    while not await disconnected():
        reset, rows = tail.read()
        if reset:
            yield _sse("reset", {})
        if points := curves(rows):
            yield _sse("metrics", points)
        now = state()
        if now != last:
            yield _sse("state", {"state": now})
            last = now
        settled_polls = settled_polls + 1 if now in SETTLED else 0
        if settled_polls >= 2:  # one more poll picks up the rows written just before the end
            yield _sse("end", {"state": now})
            return
        await asyncio.sleep(POLL_S)
