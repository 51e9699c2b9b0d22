"""Returning freed heap pages to the OS between steps (train/fastpath/host_memory.py)."""

import sys

import pytest

from tunesmith.train.fastpath.host_memory import release_free_heap


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_pages_between_live_blocks_go_back_to_the_os():
    # Heap blocks (below the mmap threshold) with every other one kept alive: freeing the rest
    # leaves holes glibc keeps resident (nothing at the top of the heap to shrink), which is
    # what fragmented activations look like; trimming must give those pages back.
    blocks = [bytearray(b"\x01" * (64 * 1024)) for _ in range(3000)]  # ~190 MiB, all touched
    kept = blocks[::2]
    del blocks
    held = _rss_kib()
    assert release_free_heap()
    assert _rss_kib() < held - 60 * 1024  # most of the ~95 MiB of holes returned
    del kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs")
def test_peak_memory_restarts_at_each_run():
    """A second run in one process (compare) must not inherit the first one's peak."""
    import torch

    from tunesmith.train.memory_stats import peak_memory_bytes, reset_peak_memory

    cpu = torch.device("cpu")
    big = bytearray(b"\x01" * (300 * 1024 * 1024))
    first = peak_memory_bytes(cpu)
    del big
    reset_peak_memory(cpu)
    second = peak_memory_bytes(cpu)
    assert second < first - 200 * 1024 * 1024


def test_memory_is_short_below_a_quarter_available():
    from tunesmith.train.fastpath import host_memory

    gib = 1024**3
    assert not host_memory.memory_is_short(20 * gib, 24 * gib)
    assert host_memory.memory_is_short(5 * gib, 24 * gib)
    assert not host_memory.memory_is_short(5 * gib, 0)  # no total: never
    if sys.platform.startswith("linux"):
        available, total = host_memory._meminfo()
        assert 0 < available <= total


def test_trimmer_trims_on_creep_over_the_post_trim_baseline_and_under_pressure(monkeypatch):
    from tunesmith.train.fastpath import host_memory

    gib = 1024**3
    readings = iter([1.00, 1.05, 1.09, 1.12, 1.30, 1.31, 1.32, 1.32])  # resident GiB per step
    monkeypatch.setattr(host_memory, "resident_bytes", lambda: int(next(readings) * gib))
    available = {"bytes": 20 * gib}
    monkeypatch.setattr(host_memory, "_meminfo", lambda: (available["bytes"], 24 * gib))
    trims = []
    monkeypatch.setattr(host_memory, "release_free_heap", lambda: trims.append(1) or True)

    trimmer = host_memory.HeapTrimmer(growth=0.10)
    decisions = [trimmer.after_step() for _ in range(5)]
    # 1.00 sets the baseline; 1.05 and 1.09 are within 10%; 1.12 crept past it: trim; the
    # step after a trim (1.30, its activations faulted back in) is the new baseline.
    assert decisions == [False, False, False, True, False]
    assert trimmer.baseline == int(1.30 * gib)
    assert not trimmer.after_step()  # 1.31: within 10% of the new baseline
    available["bytes"] = 2 * gib  # memory short: trim after every step
    assert trimmer.after_step() and trimmer.after_step()
    assert len(trims) == 3 and trimmer.trims == 3
