"""How torch's OpenMP threads wait between parallel regions, chosen before torch loads.

PyTorch's Linux wheels use GNU OpenMP (libgomp). An idle libgomp worker spins for
``GOMP_SPINCOUNT`` iterations (300,000 by default) before it sleeps. Alone on the machine that
spin buys a little latency; with one other CPU-bound process on the same cores (a second
training, a test run, a server) the spinning threads take the cores from the threads with work,
and a demo training step ran ~20x slower (benchmarks/RESULTS.md, "Sharing the cores").
``OMP_WAIT_POLICY=PASSIVE`` removes the spin and costs a third of the speed alone. A spin count
of 10,000 keeps most of the speed alone and most of the shared speed; 1,000 trades a little of
the speed alone for more of the shared speed. libgomp reads the variable once, when torch loads
it, so the choice is made at start-up from how busy the CPUs are then.

A training (``tunesmith train`` and ``compare``, the benches' tunesmith side) spins longer
when it starts alone (:data:`SPIN_WATCHED`, a CPU demo step ~7% faster than at 10,000): its
model's forward passes watch the cores, training and evaluation alike, and run on fewer threads
while another process needs them (``tunesmith.core_watch``), so a process that starts later is
not starved.

A user's own ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` always wins. A value this module set is
marked (``TUNESMITH_GOMP_AUTO``) so that a child process, e.g. a training the web UI launches
later, decides again from how busy the CPUs are when it starts.
"""

from __future__ import annotations

import os
import sys
import time

SPIN_ALONE = 10_000
SPIN_SHARED = 1_000
LIBGOMP_SPIN = 300_000  # libgomp's own default
SPIN_WATCHED = 100_000  # alone, in a process whose training loop gives cores back (docstring)
# The commands whose work is training loops, which watch the cores.
WATCHED_COMMANDS = ("train", "compare")
# Other processes using at least half a core at start-up mean the cores are shared.
BUSY_CORES_SHARED = 0.5
USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
AUTO_MARK = "TUNESMITH_GOMP_AUTO"


def cpu_jiffies() -> list[int] | None:
    """/proc/stat's first line (all CPUs: user, nice, system, idle, iowait, irq, softirq,
    steal, ...) in clock ticks, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat, or None where there is none."""
    fields = cpu_jiffies()
    if fields is None:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.15) -> float | None:
    """How many cores other processes keep busy, sampled over ``interval`` seconds (Linux)."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(interval)  # this process sleeps, so what is busy meanwhile is someone else
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (os.cpu_count() or 1)


def choose_spin_count(busy: float | None, watched: bool = False) -> int:
    if busy is not None and busy >= BUSY_CORES_SHARED:
        return SPIN_SHARED
    return SPIN_WATCHED if watched else SPIN_ALONE


def configure(sample: bool = True, watched: bool = False) -> str:
    """Set ``GOMP_SPINCOUNT`` for this process and its children; says what was decided.

    Does nothing where the user set the wait policy, or where torch is already loaded (libgomp
    has read its settings by then). ``sample=False`` skips the 0.15 s look at the CPUs and
    assumes they are free (for ``import tunesmith``, which should not sleep). ``watched``: this
    process's work is a training loop that gives cores back while others need them.
    """
    if AUTO_MARK not in os.environ:
        for name in USER_SETTINGS:
            if name in os.environ:
                return f"{name}={os.environ[name]} (yours)"
    if "torch" in sys.modules:
        return "torch already loaded: libgomp's default"
    busy = busy_cores() if sample else None
    spin = choose_spin_count(busy, watched)
    os.environ["GOMP_SPINCOUNT"] = str(spin)
    os.environ[AUTO_MARK] = "1"
    seen = "" if busy is None else f", {busy:.1f} cores busy at start"
    return f"GOMP_SPINCOUNT={spin} ({'shared' if spin == SPIN_SHARED else 'alone'}{seen})"


def watched_command(argv: list[str]) -> bool:
    """Whether the command line ``argv`` (without the program) runs a watched training loop."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in WATCHED_COMMANDS


def described() -> str:
    """The wait setting this process runs with (for benchmark tables)."""
    if (
        os.environ.get("GOMP_SPINCOUNT") == str(LIBGOMP_SPIN)
        and "OMP_WAIT_POLICY" not in os.environ
    ):
        return f"libgomp default (GOMP_SPINCOUNT={LIBGOMP_SPIN})"
    for name in USER_SETTINGS:
        if name in os.environ:
            chosen = "tunesmith's choice" if AUTO_MARK in os.environ else "set by the user"
            return f"{name}={os.environ[name]} ({chosen})"
    return f"libgomp default (GOMP_SPINCOUNT={LIBGOMP_SPIN})"
