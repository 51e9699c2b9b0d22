"""Frozen-weight GEMMs cut into row blocks where this CPU's matmul runs the pieces faster.

torch's CPU matmul (oneDNN for bf16) chooses its blocking and threading from the shape, and
some shapes land badly. On the 2-core AMX Xeon (benchmarks/RESULTS.md, "GEMMs in row blocks"),
``(608, 1536) x (1536, 576)`` takes 0.80 ms, but its first 512 rows and its last 96 as two
products take 0.61 ms: above ~544 rows, products with 576 output columns stop using the second
core. The same cut makes ``(608, 576) x (576, 1536)`` 30% slower, and which cut wins moves with
the row count (two halves beat 512-row blocks at 704 rows). So the cut is measured, not
guessed: the first time this process meets a shape, each candidate (the whole product, 512-row
blocks, two halves) runs on the real operands, and the fastest is kept by a margin. The
choices go to a small JSON file in the tunesmith cache, keyed by CPU, torch version and thread
count, so later runs on the machine (and a resumed run) cut the same way; the pieces differ
from the whole product in bf16 rounding only (the kernel's K blocking follows the row count).

Each timed call meets the operands as a training step does: the weight was last read a whole
pass ago and the output is new memory, so neither is in any cache, while the input was written
just before. Where the kernels are built on x86-64 (their ``evict``), the weight and a new
output are evicted from the caches before each timed call; timed on cached operands, oneDNN won
products that it lost in the step (the AMX kernel writes large outputs without reading them
first), and with the AMX kernel's streamed outputs a bench step was 4-6% faster than with the
choices made that way (benchmarks/RESULTS.md, "Frozen products' outputs written past the
cache").

On a CPU with AMX tiles one more candidate is timed: the whole product in tunesmith's own AMX
kernel (``native/amx_gemm.cpp``), which packs the weight's panels itself and beats oneDNN on
the thin products of a small model (a (416, 576) x (576, 192) product 0.47x its time, a
(480, 576) x (576, 576) one 0.82x) but not on every shape (the vocabulary head: 1.2-1.8x), so
it too is taken only where it measured faster. Such a product's key says the kernel was a
candidate, so choices made without it (another CPU, the kernels switched off) stay apart.

Only products big enough to be worth a measurement qualify (:func:`qualifies`), so the tiny
models of the tests always take the whole product. ``TUNESMITH_ROW_SPLIT=0`` turns the cuts and
the kernel off (the reference path, for A/B runs); ``TUNESMITH_NATIVE=0`` the kernel alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import torch

from tunesmith.switches import Switch
from tunesmith.train.fastpath import native
from tunesmith.train.fastpath.kernel_choice import SavedTable, cache_file, machine_ident

ENV = "TUNESMITH_ROW_SPLIT"
BLOCK = 512  # rows per block: the largest height at which the measured bad shapes run well
MIN_ROWS = 256  # fewer rows: at most a few blocks of work, no cut pays its second call
MIN_WEIGHT = 256 * 256  # K x N below this: the product is too small to be worth timing
KEY_ROWS = 32  # row counts share a choice within 32 (packed passes are bucketed to 32 already)
MARGIN = 0.95  # a cut must beat the whole product by 5% (timing noise on a busy machine)
REPEATS = 3  # timed calls per candidate, after one that builds oneDNN's primitive
AMX = -1  # the "height" of the whole product in tunesmith's AMX kernel
MEASURED_FROM = "memory"  # candidates timed on an evicted weight and output (module doc)
_clock = time.perf_counter


enabled = Switch(ENV)  # on unless ENV is 0, off, false or no


def qualifies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a @ b`` (2-D, CPU) is a product whose cut is worth measuring."""
    return (
        a.dim() == 2 and b.dim() == 2 and a.device.type == "cpu"
        and a.shape[0] >= MIN_ROWS and b.shape[0] * b.shape[1] >= MIN_WEIGHT
    )  # fmt: skip


def amx_takes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether tunesmith's AMX kernel can compute ``a @ b`` here: bf16, K and N multiples of 32,
    ``a`` with unit column stride, ``b`` a row-major matrix or the transpose of one (a weight's
    ``W.t()``), on a CPU whose tiles the kernels use (:func:`~tunesmith.train.fastpath.native.amx`)."""
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or a.stride(1) != 1:
        return False
    k, n = b.shape
    if k % 32 or n % 32:
        return False
    if b.stride(1) != 1 and not (b.stride(0) == 1 and b.stride(1) >= k):
        return False
    return native.amx()


def _amx_mm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool, *extension):
    # The switch was read where the height was chosen (RowSplits.height, _fastest).
    native._kernels().amx_mm_(out, a, b, accumulate, *extension)


def candidates(rows: int, amx: bool = False) -> list[int]:
    """Block heights to try for ``rows`` rows; 0 is the whole product, :data:`AMX` the whole
    product in tunesmith's AMX kernel (tried where ``amx``)."""
    heights = [0]
    if rows > BLOCK:
        heights.append(BLOCK)
    half = -(-rows // 2)
    if half not in heights:
        heights.append(half)
    if amx:
        heights.append(AMX)
    return heights


def _blocks(rows: int, height: int) -> list[slice]:
    if height <= 0 or height >= rows:
        return [slice(0, rows)]
    return [slice(r, min(r + height, rows)) for r in range(0, rows, height)]


def _mm(
    a: torch.Tensor, b: torch.Tensor, height: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``a @ b`` at block height ``height``, into ``out`` where given (the measurement's)."""
    if height == AMX:
        out = a.new_empty((a.shape[0], b.shape[1])) if out is None else out
        _amx_mm_(out, a, b, accumulate=False)
        return out
    blocks = _blocks(a.shape[0], height)
    if len(blocks) == 1:
        return a @ b if out is None else torch.mm(a, b, out=out)
    out = a.new_empty((a.shape[0], b.shape[1])) if out is None else out
    for s in blocks:
        torch.mm(a[s], b, out=out[s])
    return out


class RowSplits(SavedTable):
    """The measured block height per product shape, for this CPU, torch and thread count.

    Args:
        path: The JSON file the choices are kept in; None keeps them in this process only.
    """

    def __init__(self, path: Path | None):
        super().__init__(path, int)
        # The answer per exact operand signature, so that a product met again costs one tuple
        # and one lookup instead of the key's formatting, the switch's read and the lock: in a
        # loop of products the full lookup added 43 µs to a 0.23 ms product, the memo 11
        # (benchmarks/RESULTS.md, "A LoRA node without casts, ..."); a step makes ~450.
        self._seen: dict[tuple, int] = {}

    @staticmethod
    def key(a: torch.Tensor, b: torch.Tensor) -> str:
        layout = "t" if b.stride(0) == 1 and b.shape[0] > 1 else "n"  # W.t() views vs rows
        rows = -(-a.shape[0] // KEY_ROWS) * KEY_ROWS  # e.g. the loss head's trained-token count
        kernel = "-amx" if amx_takes(a, b) else ""  # the AMX kernel was one of the candidates
        key = f"{rows}x{a.shape[1]}x{b.shape[1]}{layout}-{a.dtype}-{torch.get_num_threads()}"
        return key + kernel

    def height(self, a: torch.Tensor, b: torch.Tensor) -> int:
        """The block height to compute ``a @ b`` with (0: whole), measured on first sight."""
        seen = (
            a.shape,
            a.stride(1),
            b.shape,
            b.stride(),
            a.dtype,
            a.is_cpu,
            torch.get_num_threads(),
        )
        height = self._seen.get(seen)
        if height is None:
            height = self._look_up(a, b)
            if height is None:  # not measured while the switch is off: ask again later
                return 0
            self._seen[seen] = height
        # A cut is taken only while the switch is on (read per call: tests and A/B runs flip it).
        if not height or not enabled():
            return 0
        if height == AMX and (native.kernels() is None or torch_only()):
            return 0  # the kernels switched off, or a recorder that sees only torch's ops
        return height

    def _look_up(self, a: torch.Tensor, b: torch.Tensor) -> int | None:
        """The table's height for ``a @ b``, measured if new and the switch is on (else None)."""
        if not qualifies(a, b):
            return 0
        key = self.key(a, b)
        with self.lock:
            table = self.entries()
            if key not in table:
                if not enabled() or (key.endswith("-amx") and native.kernels() is None):
                    return None
                self.put(key, _measure(a, b))
            return table[key]

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b``, in row blocks where that measured faster."""
        return _mm(a, b, self.height(a, b))

    def addmm(self, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``c + a @ b`` with ``c`` broadcast over rows (a bias) or ``(rows, N)``; a new tensor."""
        height = self.height(a, b)
        if height == AMX and c.dtype == a.dtype:
            out = a.new_empty((a.shape[0], b.shape[1])).copy_(c)  # never c itself: a new tensor
            _amx_mm_(out, a, b, accumulate=True)  # fp32(c) + the product, rounded once
            return out
        blocks = _blocks(a.shape[0], height)  # AMX (-1): whole
        if len(blocks) == 1:
            return torch.addmm(c, a, b)
        out = a.new_empty((a.shape[0], b.shape[1]))
        for s in blocks:
            torch.addmm(c if c.dim() == 1 else c[s], a[s], b, out=out[s])
        return out

    def on_tiles(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether ``a @ b`` runs in tunesmith's AMX kernel here (measured faster)."""
        return self.height(a, b) == AMX

    def mm_extended(
        self, a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2t: torch.Tensor
    ) -> torch.Tensor:
        """``a @ b + a2 @ b2t.T`` in the AMX kernel, summed in fp32 and rounded once (a LoRA
        branch as a low-rank extension of its frozen product); only where :meth:`on_tiles`."""
        out = a.new_empty((a.shape[0], b.shape[1]))
        _amx_mm_(out, a, b, False, a2, b2t)
        return out

    def addmm_(self, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``c += a @ b`` in place, ``c`` ``(rows, N)``, in the row blocks of :meth:`mm`.

        Where ``c`` is a fresh tensor the caller owns, this skips the copy of ``c`` into a new
        output that :meth:`addmm` makes (0.05-0.09 ms of a 0.3-0.7 ms demo-sized product);
        the values are the same.
        """
        height = self.height(a, b)
        if height == AMX and c.stride(1) == 1:
            _amx_mm_(c, a, b, accumulate=True)
            return c
        for s in _blocks(a.shape[0], height):  # AMX (-1) here: whole, torch's
            c[s].addmm_(a[s], b)
        return c


_STATE = threading.local()


@contextlib.contextmanager
def through_torch():
    """Every product in torch's own ops while active, as a recorder of dispatched ops needs
    (the bench's shape-matched limit): the kernels' own products (these frozen products on AMX
    tiles, and packed attention's, ``fused_attention.runs``) are not dispatched."""
    saved = getattr(_STATE, "torch_only", False)
    _STATE.torch_only = True
    try:
        yield
    finally:
        _STATE.torch_only = saved


def torch_only() -> bool:
    """Whether :func:`through_torch` is active on this thread."""
    return getattr(_STATE, "torch_only", False)


def tiles_take(*tensors: torch.Tensor) -> bool:
    """Whether tunesmith's AMX kernels (the head's, the LoRA backward's) may run on these
    tensors: bf16 on CPU with the kernels on, their AMX code runs here
    (:func:`~tunesmith.train.fastpath.native.amx`), and no recorder of dispatched products
    listens (:func:`through_torch`: the bench's shape-matched limit counts torch's products)."""
    return native.amx() and native.runs_on(*tensors) and not torch_only()  # amx(): cached


def measuring() -> bool:
    """Whether this thread is timing candidates now (the bench's GEMM recorder skips those)."""
    return getattr(_STATE, "measuring", False)


def _measure(a: torch.Tensor, b: torch.Tensor) -> int:
    """The fastest block height for ``a @ b`` on these operands (0 unless a cut wins by MARGIN)."""
    _STATE.measuring = True
    try:
        return _fastest(a, b)
    finally:
        _STATE.measuring = False


def evictor():
    """The kernels, where their ``evict`` drops memory from the caches here (x86-64); else None."""
    kernels = native.kernels()
    return kernels if kernels is not None and kernels.evict(torch.empty(0)) else None


def _fastest(a: torch.Tensor, b: torch.Tensor) -> int:
    times = {}
    amx = amx_takes(a, b) and native.kernels() is not None
    kernels = evictor()
    with torch.no_grad():
        for height in candidates(a.shape[0], amx):
            _mm(a, b, height)  # oneDNN builds (JIT-compiles) the primitive of each new shape
            best = float("inf")
            for _ in range(REPEATS):
                out = a.new_empty((a.shape[0], b.shape[1]))
                if kernels is not None:  # as a step meets them: from memory (module doc)
                    kernels.evict(b)
                    kernels.evict(out)
                start = _clock()
                _mm(a, b, height, out)
                best = min(best, _clock() - start)
            times[height] = best
    height = min(times, key=times.get)
    return height if times[height] < MARGIN * times[0] else 0


def table_path() -> Path:
    """``<tunesmith cache>/row-split/<CPU, ISA flags, oneDNN ISA cap, torch version, AMX kernel's
    build>.json``: a changed kernel is a new candidate, measured again."""
    ident = machine_ident()
    if evictor() is not None:
        ident += f"|{MEASURED_FROM}"
    if native.amx():
        ident += f"|{native.extension_name()}"
    return cache_file("row-split", ident)


_SPLITS: RowSplits | None = None


def splits() -> RowSplits:
    """This process's choices, read from and kept in :func:`table_path`."""
    global _SPLITS
    if _SPLITS is None:
        _SPLITS = RowSplits(table_path())
    return _SPLITS
