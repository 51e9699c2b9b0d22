"""Which of a kernel's interchangeable paths runs, measured on this machine the first time.

Several of tunesmith's CPU kernels compute the same values by more than one path: the LoRA
passes sum in fp32 FMAs or in AVX512-BF16 dot products, the LoRA backward's products also run on
AMX tiles, and the fused attention runs on tiles or in dot products. Which is fastest depends on
the CPU, not only on its ISA: on the AMD EPYC (Zen 4) the dot products took 0.43-0.54x the fp32
pass's time (benchmarks/RESULTS.md, "The LoRA products in AVX512-BF16 dot products"), while an
AMX Xeon's FMA and dot-product units are balanced otherwise and its tiles won the LoRA backward
from a rank of 8 only. A rule per ISA measured on one machine is a guess on the next, so where a
call has more than one path and is large enough to be worth a measurement, the first such call
of a shape times each path on its real operands (one call that warms up, then the best of
:data:`REPEATS`) and keeps the fastest; the path the rule would take (``default``) stays unless
another beats it by :data:`MARGIN`. Choices go to a small JSON file in the tunesmith cache keyed
by CPU, ISA flags, oneDNN's ISA cap, torch's version and the kernels' build (a changed kernel is
measured again), so later runs on the machine, and a resumed run, take the same paths.

The paths differ in the order of their fp32 sums only (each path's values are tested against the
others and the eager formulas); small calls (the tests' tiny models) and a process with the
switch off (``TUNESMITH_KERNEL_CHOICE=0``: the rules alone, for A/B runs) never measure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from tunesmith.switches import Switch
from tunesmith.train.fastpath import native

logger = logging.getLogger("tunesmith")

ENV = "TUNESMITH_KERNEL_CHOICE"
MIN_ROWS = 256  # fewer rows: a call too small to time reliably; the rule decides meanwhile
MIN_WIDTH = 256  # narrower: a small model's call (the tests' tiny models), never measured
REPEATS = 3  # timed calls per path, after one that warms it up
MARGIN = 0.95  # another path must beat the default by 5% (timing noise on a busy machine)
_clock = time.perf_counter


def worth_measuring(rows: int, width: int) -> bool:
    """Whether a call over ``rows`` rows of ``width`` (its widest operand's columns) is large
    enough to time reliably."""
    return rows >= MIN_ROWS and width >= MIN_WIDTH


enabled = Switch(ENV)  # on unless ENV is 0, off, false or no


def machine_ident() -> str:
    """What a measured choice depends on besides its shape: the CPU, its ISA flags, oneDNN's
    ISA cap (e.g. AVX512_CORE_BF16 on an AMX CPU) and torch's version."""
    from tunesmith.precision import cpu_info, onednn_isa_cap

    model, flags = cpu_info()
    return f"{model}|{' '.join(sorted(flags))}|{onednn_isa_cap() or ''}|{torch.__version__}"


def _load(path: Path | None, cast: Callable[[object], object]) -> dict:
    """The choices saved at ``path``, values through ``cast``; empty where there are none or the
    file is unreadable (then they are measured again)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): cast(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


class SavedTable:
    """Measured choices by key, read from a JSON file on first use and written back atomically
    with each new one (a cache that cannot be written never fails a run; the choices then stay
    in this process). Shared with :class:`~tunesmith.train.fastpath.row_split.RowSplits`.

    Args:
        path: The JSON file the choices are kept in; None keeps them in this process only.
        cast: What each saved value is read back as.
    """

    def __init__(self, path: Path | None, cast: Callable[[object], object] = str):
        self.path = path
        self.lock = threading.Lock()
        self._cast = cast
        self._entries: dict | None = None

    def entries(self) -> dict:
        """The choices, read from the file the first time."""
        if self._entries is None:
            self._entries = _load(self.path, self._cast)
        return self._entries

    def put(self, key: str, value: object) -> None:
        """Keep ``value`` for ``key`` and save the table; call with :attr:`lock` held."""
        self.entries()[key] = value
        if self.path is None:
            return
        try:
            from tunesmith.atomic import write_json

            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, dict(sorted(self._entries.items())))
        except OSError as exc:
            logger.debug("measured choices not saved to %s: %s", self.path, exc)


class Choices(SavedTable):
    """The measured path per call shape, for this machine and kernels' build."""

    def __init__(self, path: Path | None):
        super().__init__(path)
        self.memo: dict[tuple, str] = {}  # (key, names) -> the table's choice, once looked up

    def known(self, key: str) -> str | None:
        """The path chosen for ``key`` (here or by an earlier run), or None if not yet measured."""
        with self.lock:
            return self.entries().get(key)

    def measure(
        self,
        key: str,
        paths: dict[str, Callable[[], object]],
        default: str,
        before: Callable[[], None] | None = None,
    ) -> str:
        """Time each of ``paths`` (name -> one call of it) and keep the fastest for ``key``;
        ``default`` unless another is :data:`MARGIN` faster. ``before`` runs untimed before
        each timed call (e.g. evicting an operand that a step reads from memory)."""
        times = {}
        with torch.no_grad():
            for name, call in paths.items():
                try:
                    times[name] = _best_time(call, before)
                except Exception as exc:  # noqa: BLE001 - a path refusing this call never runs
                    if name == default:
                        raise  # the call itself would fail the same way
                    logger.warning("kernel path %s failed on %s (%s); not taken", name, key, exc)
        fastest = min(times, key=times.get)
        choice = fastest if times[fastest] < MARGIN * times[default] else default
        logger.debug("kernel choice %s: %s (%s)", key, choice, _described(times))
        with self.lock:
            self.put(key, choice)
        return choice


def _best_time(call: Callable[[], object], before: Callable[[], None] | None) -> float:
    call()  # builds, faults in its scratch memory, warms its code
    best = float("inf")
    for _ in range(REPEATS):
        if before is not None:
            before()
        start = _clock()
        call()
        best = min(best, _clock() - start)
    return best


def _described(times: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e6 * t:.0f} us" for name, t in times.items())


def choose(
    key: tuple,
    names: tuple[str, ...],
    default: str,
    large: Callable[[], bool],
    paths: Callable[[], dict[str, Callable[[], object]]],
    before: Callable[[], None] | None = None,
) -> str:
    """The path to run, of ``names`` (those this call can take; ``default`` among them): the
    one measured for ``key`` (the call's shape) and these names; else, where ``large()``
    (:func:`worth_measuring`), measured now (``paths()`` builds name -> one call of that path on
    the call's operands), else ``default``. Only ``default`` with the switch off."""
    if len(names) < 2 or not enabled():
        return default
    table = choices()
    seen = (key, names)
    known = table.memo.get(seen)  # a step makes ~300 such calls: one lookup, no formatting
    if known is None:
        text = "|".join((*(str(part) for part in key), "/".join(names)))
        known = table.known(text)
        if known is None:
            if not large():
                return default
            known = table.measure(text, paths(), default, before)
        table.memo[seen] = known
    return known if known in names else default


def cache_file(folder: str, ident: str) -> Path:
    """``<tunesmith cache>/<folder>/<digest of ident>.json``: a table of measured choices."""
    from tunesmith.models.embedded import cache_root

    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root() / folder / f"{digest}.json"


def table_path() -> Path:
    """``<tunesmith cache>/kernel-choice/<machine, kernels' build>.json``."""
    return cache_file("kernel-choice", f"{machine_ident()}|{native.extension_name()}")


_CHOICES: Choices | None = None


def choices() -> Choices:
    """This process's choices, read from and kept in :func:`table_path`."""
    global _CHOICES
    if _CHOICES is None:
        _CHOICES = Choices(table_path())
    return _CHOICES


def summary() -> str | None:
    """The paths this process's calls took, per kind of call, e.g. ``lora-backward: 3 dots,
    1 tiles; lora-forward: 4 dots`` (for a bench's machine line); None where no call had a
    choice (one path each, small calls, the switch off)."""
    if _CHOICES is None or not _CHOICES.memo:
        return None
    kinds: dict[str, Counter] = {}
    for (key, _names), choice in _CHOICES.memo.items():
        kinds.setdefault(str(key[0]), Counter())[choice] += 1
    return "; ".join(
        f"{kind}: " + ", ".join(f"{n} {name}" for name, n in counts.most_common())
        for kind, counts in sorted(kinds.items())
    )
