"""Returning freed heap pages to the OS between steps (train/host_memory.py)."""

import sys

import pytest

from tunesmith.train.host_memory import release_free_heap


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

    from tunesmith.train.loop import peak_memory_bytes, reset_peak_memory

    cpu = torch.device("cpu")
    big = bytearray(b"\x01" * (300 * 1024 * 1024))
    first = peak_memory_bytes(cpu)
    del big
    reset_peak_memory(cpu)
    second = peak_memory_bytes(cpu)
    assert second < first - 200 * 1024 * 1024


def test_memory_is_short_below_a_quarter_available():
    from tunesmith.train import host_memory

    gib = 1024**3
    assert not host_memory.memory_is_short(20 * gib, 24 * gib)
    assert host_memory.memory_is_short(5 * gib, 24 * gib)
    assert not host_memory.memory_is_short(5 * gib, 0)  # no total: never
    if sys.platform.startswith("linux"):
        available, total = host_memory._meminfo()
        assert 0 < available <= total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim, /proc")
def test_trimmer_keeps_pages_while_resident_memory_is_steady_and_trims_when_it_creeps():
    from tunesmith.train.host_memory import HeapTrimmer

    trimmer = HeapTrimmer(growth=0.02)  # 2% of a big test worker is still < 190 MiB
    assert not trimmer.after_step()  # the first step sets the baseline
    assert not trimmer.after_step()  # nothing grew: glibc keeps its pages for the next step
    # Creep: fragmented holes of ~95 MiB stay resident (see the test above).
    blocks = [bytearray(b"\x01" * (64 * 1024)) for _ in range(3000)]
    kept = blocks[::2]
    del blocks
    held = _rss_kib()
    assert trimmer.after_step()
    assert trimmer.trims == 1 and trimmer.baseline is None
    assert _rss_kib() < held - 60 * 1024
    assert not trimmer.after_step()  # a new baseline after the trim
    del kept
