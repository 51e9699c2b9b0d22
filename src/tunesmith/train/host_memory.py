"""Give freed heap memory back to the OS between optimizer steps (glibc ``malloc_trim``).

Every CPU training pass allocates and frees activations of a different shape (rows differ in
length), and glibc keeps the freed pages in its arenas: on the demo the process's resident
memory crept up by ~30 MB per step although live memory did not, so peak RSS grew with the
run's length (1.26 -> 1.65 GB over 12 steps). ``malloc_trim(0)`` after each step returns those
pages (peak 1.55 GB over the same steps) for well under a millisecond per call here. A no-op
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


def release_free_heap() -> bool:
    """Return the allocator's free pages to the OS; True when glibc did it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
