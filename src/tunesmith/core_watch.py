"""Run CPU training and generation on the cores other processes leave free, checked between
forward passes.

A training that starts alone lets torch's OpenMP workers spin long between parallel regions
(``tunesmith.cpu_share.SPIN_WATCHED``): a demo step is ~7% faster than with short spins. But
spinning workers take the cores from any CPU-bound process that starts later (two processes'
spinning threads made a demo step ~20x slower; benchmarks/RESULTS.md, "Sharing the cores").
libgomp reads its spin count once, so what can change during a run is the thread count: at the
start of each forward pass of the model (:meth:`CoreWatch.watch_forwards`: training passes and
the command's evaluations, whose generation is one pass per new token), at most once a second,
:class:`CoreWatch` measures how many cores the rest of the machine used since its last look
(``/proc/stat``'s busy time less this process's CPU time) and, where that takes a core, runs on
the cores left (``torch.set_num_threads``; at least one). With fewer threads than before, the
idle workers sleep after one last spin, so the other process gets its core. When the others
stop, the next look gives the threads back. The evaluation needs it as much as the loop: beside
a later one-thread process, generation at the training's spin ran ~9x slower without it
(benchmarks/RESULTS.md, "The evaluation on the cores other processes leave free"). The CPU
fast paths attach a watch to the model they train (``FastPaths.attach_watch``); the commands
that generate without them (``tunesmith eval``, ``chat``, each ``serve`` engine's decode
thread) use :func:`watching`.

Only where tunesmith chose the thread count (``--threads`` and ``OMP_NUM_THREADS`` unset), on
one rank (distributed ranks on one machine are each other's "others" and are sized by their
launcher). Some of torch's reductions split their work by thread, so a run that gave a core
away can differ from one that did not in the last bits; ``--threads`` (or
``TUNESMITH_CORE_WATCH=0``) keeps the count fixed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.hooks import RemovableHandle

from tunesmith.cpu_share import BUSY_CORES_SHARED, cpu_jiffies
from tunesmith.switches import Switch

logger = logging.getLogger("tunesmith")

ENV = "TUNESMITH_CORE_WATCH"
INTERVAL_S = 1.0  # shortest window a decision is made over (/proc/stat counts in 10 ms ticks)
# /proc/stat's first line: user nice system idle iowait irq softirq steal ...; busy is what ran.
# Steal (another VM on the host) is left out: fewer threads would not give that time back.
_BUSY_FIELDS = (0, 1, 2, 5, 6)


def machine_busy_s() -> float | None:
    """CPU seconds all processes have run since boot (``/proc/stat``); None where there is none."""
    fields = cpu_jiffies()
    if fields is None:
        return None
    return sum(fields[i] for i in _BUSY_FIELDS if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def threads_for(others: float, cores: int, most: int) -> int:
    """Threads to run when other processes used ``others`` cores of ``cores``: a core is left
    to them for each started core beyond :data:`~tunesmith.cpu_share.BUSY_CORES_SHARED`."""
    taken = max(0, math.ceil(others - BUSY_CORES_SHARED))
    return max(1, min(most, cores - taken))


class CoreWatch:
    """Decides, between forward passes, how many threads this process runs (module doc).

    Args:
        most: The thread count to run when nothing else needs the cores (the run's own).
        cores: The machine's cores.
        clock, own_cpu_s, busy_s, set_threads: Wall clock, this process's CPU seconds, the
            machine's busy CPU seconds and the thread setter (replaceable for tests).
    """

    def __init__(
        self,
        most: int,
        cores: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        own_cpu_s: Callable[[], float] = time.process_time,
        busy_s: Callable[[], float | None] = machine_busy_s,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ):
        self.most, self.cores, self.threads = most, cores, most
        self._clock, self._own, self._busy, self._set = clock, own_cpu_s, busy_s, set_threads
        self._start: tuple[float, float, float] | None = None
        self.others: float | None = None  # cores the other processes used in the last window
        self.changes = 0

    def look(self) -> int | None:
        """Look at the cores if a window has passed; the new thread count when it changed."""
        t = self._clock()
        if self._start is not None and t - self._start[0] < INTERVAL_S:
            return None  # the clock alone: a generated token's pass is ~10 ms, /proc/stat ~30 us
        busy = self._busy()
        if busy is None:
            return None
        now = (t, self._own(), busy)
        if self._start is None:
            self._start = now
            return None
        (t0, own0, busy0), (t1, own1, busy1) = self._start, now
        self._start = now
        self.others = others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        threads = threads_for(others, self.cores, self.most)
        if threads == self.threads:
            return None
        self._set(threads)
        logger.info(
            "other processes used %.1f of %d cores: running on %d of %d threads",
            others, self.cores, threads, self.most,
        )  # fmt: skip
        self.threads = threads
        self.changes += 1
        return threads

    def watch_forwards(self, model: torch.nn.Module) -> RemovableHandle:
        """Look at the start of every forward pass of ``model`` (a hook on its input embeddings,
        which every pass calls, peft's wrappers and ``generate`` included; the model itself
        where it has none); ``.remove()`` the handle to stop."""
        try:
            module = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            module = None
        if not isinstance(module, torch.nn.Module):
            module = model
        return module.register_forward_pre_hook(self._before_pass)

    def _before_pass(self, _module, _args) -> None:
        self.look()  # a pre-hook's return value would replace the module's inputs

    def restore(self) -> None:
        """Give the process its own thread count back (the loop or the generation ended)."""
        if self.threads != self.most:
            self._set(self.most)
            self.threads = self.most


enabled = Switch(ENV)  # on unless ENV is 0, off, false or no


def watch_cores() -> CoreWatch | None:
    """A watch over this process's threads, or None where it has nothing to decide: one
    thread, the user's count (``OMP_NUM_THREADS``), no ``/proc/stat``, or switched off
    (``TUNESMITH_CORE_WATCH=0``)."""
    most = torch.get_num_threads()
    if most <= 1 or "OMP_NUM_THREADS" in os.environ or not enabled() or machine_busy_s() is None:
        return None
    return CoreWatch(most, os.cpu_count() or most)


@contextlib.contextmanager
def watching(model: torch.nn.Module) -> Iterator[CoreWatch | None]:
    """``model``'s forward passes watched while inside (a CPU model, where :func:`watch_cores`
    gives a watch); the process's own thread count again on the way out. For the commands that
    generate without the training's fast paths (``tunesmith eval``, ``chat``, ``serve``)."""
    param = next(model.parameters(), None)
    watch = watch_cores() if param is not None and param.device.type == "cpu" else None
    if watch is None:
        yield None
        return
    handle = watch.watch_forwards(model)
    try:
        yield watch
    finally:
        handle.remove()
        watch.restore()
