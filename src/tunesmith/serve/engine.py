"""The batching engine: one decode thread per loaded model, requests join at step boundaries.

The thread owns the model. Each step it decodes one token for every running row in a single
``(B, 1)`` forward, then prefills the requests that arrived meanwhile (as one left-padded
batch) and pads them into the running cache (:class:`~tunesmith.serve.batch.KVBatch`): a new
request waits for at most one step, not for the batch to finish, and finished rows leave at
once. Rows of different adapters share every forward (peft's ``adapter_names=``, one name per
row). Requests wait in a bounded queue; :meth:`Engine.submit` refuses one past it
(:class:`QueueFull`, which the app answers with 429). Results go back through a callback per
request, which the app points at that request's asyncio queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tunesmith.core_watch import watching
from tunesmith.serve.batch import KVBatch, cache_argument, left_padded, returned_cache
from tunesmith.serve.models import Backend, ServedModel
from tunesmith.serve.sampling import Sampling
from tunesmith.serve.text import TextStream

log = logging.getLogger("tunesmith.serve")


class QueueFull(Exception):
    """The engine's waiting queue is full; the client should retry later."""


@dataclass(frozen=True)
class Event:
    """A piece of one answer: new text, and at the end why it ended and how many tokens."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "error"
    completion_tokens: int = 0
    error: str | None = None


@dataclass(eq=False)
class Job:
    """One request as the engine sees it; ``emit`` must be safe to call from another thread."""

    prompt: list[int]
    served: ServedModel
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: bool = False  # set by the app when the client went away
    stream: TextStream = field(init=False)
    generated: int = 0
    next_token: int = -1

    def __post_init__(self) -> None:
        self.stream = TextStream(self.served.tokenizer, self.sampling.stop)

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Decodes every request for one :class:`~tunesmith.serve.models.Backend`.

    Args:
        backend: the loaded model.
        max_batch: rows decoded together at most.
        max_queue: requests that may wait for a row; past it :meth:`submit` raises.
        watch_cores: decode on the cores other processes leave free
            (:func:`tunesmith.core_watch.watching`); False where the thread count is the user's.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        watch_cores: bool = True,
    ):
        self.backend = backend
        self.max_batch, self.max_queue = max_batch, max_queue
        self.watch_cores = watch_cores
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._rows: list[Job] = []
        self._joining: list[Job] = []  # taken from the queue, being prefilled
        self._batch = KVBatch()
        self._stopping = False
        self.peak_rows = 0  # the most rows one forward has decoded (batching at work)
        self.dropped = 0  # rows ended early because their client went away
        self._thread: threading.Thread | None = None
        self._cache_arg = cache_argument(backend.model)
        self._device = next(backend.model.parameters()).device

    @property
    def load(self) -> tuple[int, int]:
        """(running rows, waiting requests)."""
        return len(self._rows) + len(self._joining), len(self._waiting)

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"tunesmith-serve:{self.backend.label}", daemon=True
                )
                self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a request; raises :class:`QueueFull` when ``max_queue`` requests wait."""
        self.start()
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting; retry later")
            self._waiting.append(job)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued and running requests, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        model = self.backend.model
        watched = watching(model) if self.watch_cores else contextlib.nullcontext()
        with torch.inference_mode(), watched:
            while True:
                with self._cond:
                    while not (self._waiting or self._rows or self._stopping):
                        self._cond.wait()
                    if self._stopping and not (self._waiting or self._rows):
                        return
                    free = self.max_batch - len(self._rows)
                    taken = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
                    self._joining = [j for j in taken if not j.cancelled]
                self.dropped += len(taken) - len(self._joining)
                try:
                    self._step(self._joining)
                except Exception as exc:  # a failed forward fails its batch, not the server
                    log.exception("decode step failed")
                    for job in self._rows + self._joining:
                        job.emit(Event(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
                    self._rows, self._batch = [], KVBatch()
                self._joining = []

    def _step(self, joining: list[Job]) -> None:
        self._drop_cancelled()
        if self._rows:
            mask, positions = self._batch.decode_inputs()
            ids = torch.tensor([[j.next_token] for j in self._rows], device=self._device)
            out = self._forward(self._rows, ids, mask, positions, self._batch.cache)
            self._batch.advanced(returned_cache(out), mask)
            keep = self._sample(self._rows, out.logits[:, -1])
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)
        if joining:
            ids, mask, positions = left_padded([j.prompt for j in joining], self._pad, self._device)
            out = self._forward(joining, ids, mask, positions, None)
            fresh = KVBatch(returned_cache(out), mask)
            keep = self._sample(joining, out.logits[:, -1])
            fresh.keep(keep)
            if keep:
                self._batch.join(fresh)
                self._rows += [joining[i] for i in keep]
            self._joining = []  # counted as running from here on
        self.peak_rows = max(self.peak_rows, len(self._rows))

    @property
    def _pad(self) -> int:
        return self.backend.pad_token_id

    def _drop_cancelled(self) -> None:
        keep = [i for i, j in enumerate(self._rows) if not j.cancelled]
        if len(keep) < len(self._rows):
            self.dropped += len(self._rows) - len(keep)
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)

    def _forward(self, jobs: list[Job], ids, mask, positions, cache):
        """One forward of ``ids`` (B, T) for ``jobs``; logits only at the last position."""
        kw = {"attention_mask": mask, "position_ids": positions, "use_cache": True}
        if cache is not None:
            kw[self._cache_arg] = cache
        else:
            kw["logits_to_keep"] = 1  # prefill: only the last position's logits are needed
        if self.backend.mixed:
            kw["adapter_names"] = [j.served.adapter for j in jobs]
        return self.backend.model(input_ids=ids, **kw)

    def _sample(self, jobs: list[Job], logits: torch.Tensor) -> list[int]:
        """Pick each row's next token, send its text; the indices of rows that go on."""
        keep = []
        for i, job in enumerate(jobs):
            if job.cancelled:
                self.dropped += 1
                continue
            token = job.sampling.choose(logits[i])
            if not self._advance(job, token):
                keep.append(i)
        return keep

    def _advance(self, job: Job, token: int) -> bool:
        """Account one token to ``job``; True when its answer has ended (and was reported)."""
        job.generated += 1
        piece = ""
        if token in job.served.stop_ids:
            reason = "stop"
        else:
            piece = job.stream.add(token)
            job.next_token = token
            if job.stream.stopped:
                reason = "stop"
            elif job.generated >= job.sampling.max_tokens or self._full(job):
                reason = "length"
            else:
                if piece:
                    job.emit(Event(text=piece))
                return False
        job.emit(Event(piece + job.stream.rest(), reason, job.generated))
        return True

    def _full(self, job: Job) -> bool:
        return len(job.prompt) + job.generated >= self.backend.context_length
