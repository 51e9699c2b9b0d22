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
