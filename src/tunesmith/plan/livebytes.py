"""A dispatch mode that counts live tensor bytes: what an allocator would hold, op by op.

Every tensor an op returns is charged when its storage is first seen and credited when that
storage dies (a weakref finalizer on the storage, whose Python object torch keeps unique per
storage). Views share their base's storage, so they cost nothing, exactly as on a GPU. It
works on real tensors and on ``FakeTensorMode`` tensors alike, which is what lets the planner
run one training step of a 70B model on a laptop.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared/tied storage counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr() if st.device.type != "meta" else id(st)] = st.nbytes()
    return sum(seen.values())


class LiveBytes(TorchDispatchMode):
    """Track the bytes of tensor storages created inside the mode.

    Attributes:
        live: bytes currently alive (created inside the mode and not yet freed).
        peak: the maximum of ``live`` since the last :meth:`reset_peak`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def exclude(self, tensors: Any) -> None:
        """Never charge the storages of ``tensors`` (they existed before the mode was entered).

        Without this a view of a parameter (``weight.t()`` inside ``linear``) would be charged
        as a new allocation the first time an op returns it.
        """
        for t in tensors:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                self._refs[id(st)] = weakref.ref(st)

    def reset_peak(self) -> None:
        self.peak = self.live

    def _free(self, key: int, nbytes: int) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def _charge(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        ref = self._refs.get(key)
        if ref is not None and ref() is st:
            return  # a view or an in-place result: the storage is already counted
        nbytes = st.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        self._refs[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: self._free(k, n))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._charge(t)
        return out


def profiled_cpu_peak(fn) -> int:
    """Peak live CPU bytes while ``fn()`` runs, measured by PyTorch's own profiler.

    Independent of :class:`LiveBytes`: the profiler records every CPU allocator event
    (``profile_memory=True``) and its memory timeline sums the live bytes of every category
    (parameters, gradients, activations, optimizer state, temporaries) over time. Used to
    validate the tracer on real CPU steps.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes)
