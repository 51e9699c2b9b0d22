"""The shape-matched limit: the time of exactly the GEMMs of the timed training steps, run alone.

The ``2048^3`` matmul ceiling says what the hardware does on a large square product; a demo
step's products are small and thin (a LoRA rank of 8, ~90-token examples, a 576-wide body),
and run at a lower rate even alone. This limit is the honest floor for the workload: record
every GEMM that real steps dispatch (a :class:`TorchDispatchMode` around the steps, so it
stays right when the step changes: forward and backward, the frozen linears' input
gradients without weight gradients, the LoRA products, the attention's batched products, the
vocabulary head at the positions whose logits the loss takes, in the row count the fused head
rounds them up to), then time exactly those shapes, dtypes and operand layouts alone with
``torch.mm`` / ``torch.bmm``.

What counts as one GEMM:

- ``mm``, ``addmm``, ``bmm``, ``baddbmm`` and the in-place ``addmm_`` / ``baddbmm_``: their
  product; the bias, mask or tensor they add to is elementwise work, not replayed.
- A fused scaled-dot-product attention kernel: its two products (``Q K^T`` and ``P V``)
  forward and the four gradient products (``dP = dO V^T``, ``dV = P^T dO``, ``dQ = dS K``,
  ``dK = dS^T Q``) backward, replayed as batched matmuls; the kernel's softmax and its
  recomputation of the scores are not GEMMs of the step's useful work.

Two replays, two floors:

- :func:`replay`: each distinct GEMM timed best-of-``reps`` on operands it reuses (warm in
  cache). The sum is the products' time at their best, a floor no step reaches on a model
  larger than the caches.
- :func:`replay_in_order`: the recorded calls once each, in the step's order, each operand in
  a buffer of its own per storage the step used (a frozen weight is one buffer for its forward
  and its backward; row blocks are views of one buffer). The weights then come from memory as
  they do in a step, and the products meet each other's shapes as they do there. Activations
  that an elementwise op wrote just before the step's product are cold here, so this floor
  is a little higher than the step's products' own time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tunesmith.train.fastpath import row_split

aten = torch.ops.aten
# Where the two product operands sit in each GEMM op's arguments.
_PRODUCT_ARGS = {
    aten.mm: (0, 1),
    aten.bmm: (0, 1),
    aten.addmm: (1, 2),
    aten.baddbmm: (1, 2),
    aten.addmm_: (1, 2),  # LoRA's branch and its input gradient accumulate in place
    aten.baddbmm_: (1, 2),
}


@dataclass(frozen=True)
class Gemm:
    """``batch`` products of ``(m, k) @ (k, n)`` in ``dtype``.

    ``a_t`` / ``b_t``: the operand is stored transposed (its last two dims column-major), as a
    linear layer's weight is in ``x @ W^T``; the replay keeps the layout, which the kernel's
    speed depends on.
    """

    batch: int
    m: int
    n: int
    k: int
    dtype: torch.dtype
    a_t: bool = False
    b_t: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.n * self.k


@dataclass(frozen=True)
class ShapeLimit:
    """The replayed GEMMs: total seconds alone (each distinct one warm, see :func:`replay`;
    all in the step's order, see :func:`replay_in_order`), how many calls, their FLOPs."""

    seconds: float
    calls: int
    flops: float
    distinct: int
    in_order_seconds: float = 0.0


@dataclass(frozen=True)
class Operand:
    """Where a recorded GEMM operand sat: its storage (by address) and its view of it."""

    storage: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, x: torch.Tensor) -> Operand:
        ptr = x.untyped_storage().data_ptr()
        return cls(ptr, x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype)

    @property
    def extent(self) -> int:
        """Elements of the storage the view reaches, from the start."""
        span = sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        return self.offset + span + 1


@dataclass(frozen=True)
class Call:
    """One recorded GEMM call and its operands (None: a fused kernel's internal product)."""

    gemm: Gemm
    a: Operand | None = None
    b: Operand | None = None


def _transposed(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.mT.is_contiguous()


def _product(a: torch.Tensor, b: torch.Tensor) -> Gemm:
    batch = a.shape[0] if a.dim() == 3 else 1
    m, k = a.shape[-2:]
    return Gemm(batch, m, b.shape[-1], k, a.dtype, _transposed(a), _transposed(b))


def _attention_products(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list:
    """The GEMMs of a fused attention kernel over ``(B, H, L, E)`` queries, ``(B, Hk, S, E)``
    keys and ``(B, Hk, S, Ev)`` values (grouped K/V heads are shared, the products are not)."""
    batch = q.shape[0] * q.shape[1]
    L, E = q.shape[-2:]
    S, Ev = k.shape[-2], v.shape[-1]
    dt = q.dtype
    if "backward" not in name:
        return [Gemm(batch, L, S, E, dt, b_t=True), Gemm(batch, L, Ev, S, dt)]  # Q K^T, P V
    return [
        Gemm(batch, L, S, Ev, dt, b_t=True),  # dP = dO V^T
        Gemm(batch, S, Ev, L, dt, a_t=True),  # dV = P^T dO
        Gemm(batch, L, E, S, dt),  # dQ = dS K
        Gemm(batch, S, E, L, dt, a_t=True),  # dK = dS^T Q
    ]


def calls_of(func, args: tuple) -> list[Call]:
    """The GEMM calls one dispatched aten call performs (none for any other op)."""
    packet = func.overloadpacket
    if packet in _PRODUCT_ARGS:
        i, j = _PRODUCT_ARGS[packet]
        a, b = args[i], args[j]
        return [Call(_product(a, b), Operand.of(a), Operand.of(b))]
    name = packet.__name__
    if name.startswith("_scaled_dot_product"):
        # Forward: (query, key, value, ...); backward: (grad_out, query, key, value, ...).
        first = 1 if "backward" in name else 0
        return [Call(g) for g in _attention_products(name, *args[first : first + 3])]
    return []


class GemmRecorder(TorchDispatchMode):
    """Records the GEMM calls dispatched while active, in order (forward and autograd's
    backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not row_split.measuring():  # a first-seen shape's timing runs are not the step's
            self.calls.extend(calls_of(func, args))
        return func(*args, **(kwargs or {}))


def record_calls(run: Callable[[], Any]) -> list[Call]:
    """The GEMM calls ``run()`` dispatches, in order."""
    with GemmRecorder() as recorder:
        run()
    return recorder.calls


def record_gemms(run: Callable[[], Any]) -> Counter[Gemm]:
    """The GEMMs ``run()`` dispatches, with how often each occurs."""
    return Counter(c.gemm for c in record_calls(run))


class _Operands:
    """Random operands by shape, dtype and layout, shared between GEMMs (a weight's many uses)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool: dict[tuple, torch.Tensor] = {}
        self.gen = torch.Generator().manual_seed(0)

    def get(self, batch: int, rows: int, cols: int, dtype, transposed: bool) -> torch.Tensor:
        key = (batch, rows, cols, dtype, transposed)
        if key not in self.pool:
            shape = (batch, cols, rows) if transposed else (batch, rows, cols)
            x = torch.randn(shape, generator=self.gen).to(self.device, dtype)
            x = x.mT if transposed else x
            self.pool[key] = x[0] if batch == 1 else x
        return self.pool[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def replay(
    counts: Counter[Gemm],
    *,
    reps: int = 3,
    max_calls: int = 8,
    device: torch.device | None = None,
) -> ShapeLimit:
    """Time every GEMM of ``counts`` alone: per distinct GEMM, the best of ``reps`` runs of
    ``min(count, max_calls)`` back-to-back calls, scaled to its count.

    Args:
        counts: What :func:`record_gemms` returned (or several of them summed).
        reps: Timed runs per distinct GEMM, after one warm-up call.
        max_calls: Most calls a timed run makes (a layer's GEMM recurs once per layer).
        device: Where to run them (default: CPU).
    """
    device = device or torch.device("cpu")
    operands = _Operands(device)
    total = 0.0
    for g, count in counts.items():
        a = operands.get(g.batch, g.m, g.k, g.dtype, g.a_t)
        b = operands.get(g.batch, g.k, g.n, g.dtype, g.b_t)
        product = torch.mm if g.batch == 1 else torch.bmm
        calls = min(count, max_calls)
        product(a, b)  # warm-up: the kernel's first-call set-up is not the step's
        best = float("inf")
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            for _ in range(calls):
                product(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t)
        total += best / calls * count
    return ShapeLimit(
        seconds=total,
        calls=sum(counts.values()),
        flops=float(sum(g.flops * c for g, c in counts.items())),
        distinct=len(counts),
    )


def _buffers(calls: list[Call], device: torch.device) -> dict[tuple, torch.Tensor]:
    """One random buffer per recorded ``(storage, dtype)``, large enough for every view the
    calls took of it (an address the allocator handed out again is one buffer, as it was one
    memory)."""
    extent: dict[tuple[int, torch.dtype], int] = {}
    for c in calls:
        for op in (c.a, c.b):
            if op is not None:
                key = (op.storage, op.dtype)
                extent[key] = max(extent.get(key, 0), op.extent)
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(n, generator=gen).to(device, key[1]) for key, n in extent.items()}


def replay_in_order(
    calls: list[Call], *, reps: int = 3, device: torch.device | None = None
) -> float:
    """Seconds to run ``calls`` once each, in order, on operands laid out as the step's were
    (see the module doc): the best of ``reps`` runs after one warm-up run.

    Args:
        calls: What :func:`record_calls` returned (the steps' calls one after the other).
        reps: Timed runs of the whole sequence.
        device: Where to run them (default: CPU).
    """
    device = device or torch.device("cpu")
    buffers = _buffers(calls, device)
    fresh = _Operands(device)

    def view(op: Operand | None, batch: int, rows: int, cols: int, dtype, transposed: bool):
        if op is None:  # a fused kernel's product: operands of its shape, reused
            return fresh.get(batch, rows, cols, dtype, transposed)
        return buffers[(op.storage, op.dtype)].as_strided(op.shape, op.stride, op.offset)

    program = []
    for c in calls:
        g = c.gemm
        a = view(c.a, g.batch, g.m, g.k, g.dtype, g.a_t)
        b = view(c.b, g.batch, g.k, g.n, g.dtype, g.b_t)
        program.append((torch.bmm if a.dim() == 3 else torch.mm, a, b))
    best = float("inf")
    for i in range(reps + 1):  # the first run builds the kernels' primitives
        _sync(device)
        t = time.perf_counter()
        for product, a, b in program:
            product(a, b)
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return best
