"""Return freed heap pages to the OS (glibc ``malloc_trim``).

glibc keeps the pages of freed blocks in its arenas for reuse, so a process that frees a large
model before loading the next one still holds the first one's pages. Training trims when it
pays (:mod:`tunesmith.train.fastpath.host_memory`); export trims between its phases. A no-op
where glibc is not the allocator (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def heap_trim_available() -> bool:
    """Whether this process's allocator is glibc's, which :func:`release_free_heap` needs."""
    return _malloc_trim() is not None


def release_free_heap() -> bool:
    """Return the allocator's free pages to the OS; True when glibc did it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


# glibc's mallopt parameter: blocks at least this large get their own mapping.
_M_MMAP_THRESHOLD = -3
# glibc's default ceiling for its self-adjusting threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit).
GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def map_large_blocks(threshold: int) -> bool:
    """Serve every allocation of ``threshold`` bytes or more from its own mapping.

    Such a block goes back to the OS the moment it is freed, so resident memory follows live
    memory. glibc otherwise raises its threshold to the largest block freed so far (up to
    32 MiB), after which same-sized blocks come from the arenas and stay resident once freed:
    a model that widens one layer at a time to fp32 would keep every widened copy's pages.
    Each new mapping is zero-filled by the kernel, so this costs page faults on hot paths; use
    it for one-shot work, not training steps. Returns False where the allocator is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, int(threshold))) if name else False
    except (OSError, AttributeError):
        return False
