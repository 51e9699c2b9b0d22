"""core_watch: a CPU training runs on the cores other processes leave free, and takes them back."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from tests.train.fastpath.test_apply import _lora
from tunesmith.train.fastpath import FastPaths, apply_fast_paths, core_watch
from tunesmith.train.fastpath.core_watch import INTERVAL_S, CoreWatch, threads_for


def test_a_core_is_left_for_each_started_core_the_others_use():
    assert threads_for(0.0, cores=2, most=2) == 2
    assert threads_for(0.5, cores=2, most=2) == 2  # half a core: a sampler, a shell
    assert threads_for(0.6, cores=2, most=2) == 1
    assert threads_for(1.9, cores=2, most=2) == 1  # never fewer than one
    assert threads_for(3.2, cores=16, most=16) == 13
    assert threads_for(0.0, cores=16, most=8) == 8  # never more than the run's own


class _Machine:
    """A clock, this process's CPU seconds and the machine's busy seconds, moved by hand."""

    def __init__(self):
        self.t = self.own = self.busy = 0.0
        self.set_to: list[int] = []

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.t += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)

    def watch(self, most: int = 2, cores: int = 2) -> CoreWatch:
        return CoreWatch(
            most, cores, clock=lambda: self.t, own_cpu_s=lambda: self.own,
            busy_s=lambda: self.busy, set_threads=self.set_to.append,
        )  # fmt: skip


def test_gives_a_core_away_while_another_process_needs_it_and_takes_it_back():
    m = _Machine()
    w = m.watch()
    assert w.after_step() is None  # the first look starts the window
    m.run(0.4, own_cores=2.0, other_cores=0.0)
    assert w.after_step() is None and w.others is None  # shorter than a window: no look
    m.run(INTERVAL_S, own_cores=1.5, other_cores=0.9)
    assert w.after_step() == 1 and w.others == pytest.approx(0.9 / 1.4)  # over the window
    assert m.set_to == [1] and w.threads == 1
    m.run(2.0, own_cores=1.0, other_cores=1.0)
    assert w.after_step() is None  # still needed: nothing to change
    m.run(2.0, own_cores=1.0, other_cores=0.1)
    assert w.after_step() == 2 and m.set_to == [1, 2]
    m.run(2.0, own_cores=2.0, other_cores=0.9)
    assert w.after_step() == 1
    w.restore()  # the loop ended: the run's own count again
    assert m.set_to == [1, 2, 1, 2] and w.threads == 2 and w.changes == 3


def test_a_machine_without_proc_stat_is_never_changed():
    m = _Machine()
    w = CoreWatch(2, 2, clock=lambda: m.t, busy_s=lambda: None, set_threads=m.set_to.append)
    for _ in range(3):
        m.run(2.0, own_cores=0.0, other_cores=2.0)
        assert w.after_step() is None
    assert m.set_to == []


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_sees_a_real_busy_process_beside_this_one():
    m = _Machine()
    w = CoreWatch(2, os.cpu_count() or 2, set_threads=m.set_to.append)
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the rival is running
        w.after_step()
        time.sleep(INTERVAL_S + 0.3)  # this process sleeps: what ran was someone else
        w.after_step()
    finally:
        rival.kill()
        rival.wait()
    assert w.others is not None and w.others >= 0.5
    assert m.set_to == [1] if (os.cpu_count() or 2) <= 2 else True


def test_the_fast_paths_watch_only_threads_tunesmith_chose(monkeypatch):
    monkeypatch.delenv(core_watch.ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast = apply_fast_paths(_lora(), torch.device("cpu"))
        assert isinstance(fast.watch, CoreWatch) and fast.watch.most == 2
        assert apply_fast_paths(_lora(), torch.device("cpu"), own_threads=True).watch is None
        assert apply_fast_paths(_lora(), torch.device("cuda")).watch is None
        monkeypatch.setenv(core_watch.ENV, "0")
        assert apply_fast_paths(_lora(), torch.device("cpu")).watch is None
        torch.set_num_threads(1)
        monkeypatch.delenv(core_watch.ENV)
        assert apply_fast_paths(_lora(), torch.device("cpu")).watch is None  # nothing to give
    finally:
        torch.set_num_threads(before)


def test_the_loops_step_hook_asks_the_watch_and_undo_restores_the_count():
    m = _Machine()
    fast = FastPaths(watch=m.watch())
    fast.after_step()
    m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
    fast.after_step()
    assert m.set_to == [1]
    fast.undo()
    assert m.set_to == [1, 2] and fast.watch is None
