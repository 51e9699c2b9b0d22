"""Training speed when another CPU-bound process shares the cores, per OpenMP wait setting.

Runs the demo recipe (examples/smollm2_lora.yaml) for ``--steps`` steps and reads its trained
tokens/s, alone and while a competitor already runs: a second demo training (started
``--lead-s`` seconds earlier, so it has chosen its own setting on an idle machine, as a user's
first job would) or a one-thread pure-Python loop (a test run, a data script). The competitor
``python loop, later`` starts after the measured training has logged ``--later-steps`` steps
(so that training chose its setting on idle CPUs); its tokens/s are those logged from then on,
and the table adds how fast the loop ran beside it, as a share of its speed alone. Settings:

* ``libgomp default``: GOMP_SPINCOUNT=300000 in both processes, what torch does unconfigured
  (and so what a TRL SFTTrainer run gets);
* ``tunesmith``: nothing set, tunesmith.cpu_share decides in each process at start-up;
* ``passive``: OMP_WAIT_POLICY=PASSIVE in both.

Goal (issue 25): with one competing CPU-bound process a demo step is at most ~2.5x slower
than alone, without losing speed alone. Medians over ``--rounds`` alternated rounds.

``--evaluation N`` measures the other half of ``tunesmith train`` instead: the evaluation on
``N`` held-out questions after a 4-step training, alone and with a Python loop that starts when
the training ends (its ``timings.eval_s``), and how fast the loop ran beside it.

Usage:
    python benchmarks/bench_cpu_sharing.py                 # 1 round, ~12 min on 2 cores
    python benchmarks/bench_cpu_sharing.py --rounds 3 --json sharing.json
    python benchmarks/bench_cpu_sharing.py --evaluation 32 --settings tunesmith --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "libgomp default": {"GOMP_SPINCOUNT": "300000"},
    "tunesmith": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
COMPETITORS = ("none", "training", "python loop", "python loop, later")
# A one-thread CPU-bound loop that prints its iterations per second when stopped.
LOOP = (
    "import signal, sys, time\nn, t = 0, time.perf_counter()\n"
    "def stop(*_):\n    print(n / (time.perf_counter() - t), flush=True)\n    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\nwhile True:\n    n += 1\n"
)
CLEARED = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "TUNESMITH_GOMP_AUTO", "OMP_NUM_THREADS")


def _env(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, "HF_HUB_OFFLINE": "1", **SETTINGS[setting]}


def _train_argv(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tunesmith", "train", "examples/smollm2_lora.yaml",
        "--max-steps", str(steps), "--eval-limit", "1", "--skip-base-eval",
        "--output", str(out), "--overwrite", "--json", *extra,
    ]  # fmt: skip


def _loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, text=True)


def _loop_rate(loop: subprocess.Popen) -> float:
    loop.send_signal(signal.SIGTERM)
    return float(loop.communicate(timeout=30)[0])


def loop_alone(seconds: float = 5.0) -> float:
    """Iterations/s of the competitor loop on the otherwise idle machine."""
    loop = _loop()
    time.sleep(seconds)
    return _loop_rate(loop)


def _beside_loop_from(proc: subprocess.Popen, ready: Callable[[], bool]) -> tuple[str, float]:
    """(stdout, loop iterations/s) of ``proc`` with a Python loop beside it once ``ready()``."""
    loop = None
    try:
        while loop is None and proc.poll() is None:
            if ready():
                loop = _loop()
            time.sleep(0.2)
        stdout = proc.communicate()[0]
        if loop is None or proc.returncode != 0:
            raise SystemExit(f"the measured command ended before the loop started: {stdout}")
        return stdout, _loop_rate(loop)
    finally:
        if loop is not None and loop.poll() is None:
            loop.kill()
        proc.kill()


def _logged_steps(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def measure_later(setting: str, steps: int, later_steps: int, tmp: Path) -> tuple[float, float]:
    """(trained tokens/s, loop iterations/s) of a demo training that starts alone and has a
    Python loop beside it from its ``later_steps``-th logged step on."""
    out = tmp / f"later-{time.monotonic_ns()}"  # new: the run writes its metrics in place
    proc = subprocess.Popen(
        _train_argv(out, later_steps + steps, "--logging-steps", "1"), cwd=REPO,
        env=_env(setting), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    _, rate = _beside_loop_from(proc, lambda: _logged_steps(metrics) >= later_steps)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    shared = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > later_steps]
    return statistics.mean(shared), rate


def measure_evaluation(setting: str, examples: int, beside: bool, tmp: Path) -> tuple[float, float]:
    """(seconds, loop iterations/s) of the evaluation after a 4-step demo training, on
    ``examples`` held-out questions; ``beside``: a Python loop starts when training ends."""
    out, steps = tmp / f"evaluation-{time.monotonic_ns()}", 4
    argv = _train_argv(out, steps, "--logging-steps", "1", "--eval-limit", str(examples))
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(setting), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    if beside:
        metrics = out / "metrics.jsonl"
        stdout, rate = _beside_loop_from(proc, lambda: _logged_steps(metrics) >= steps)
    else:
        stdout, rate = proc.communicate()[0], float("nan")
        if proc.returncode != 0:
            raise SystemExit(f"the measured command failed: {stdout}")
    return float(json.loads(stdout)["timings"]["eval_s"]), rate


def measure(setting: str, competitor: str, steps: int, lead_s: float, tmp: Path) -> float:
    """Trained tokens/s of one demo training under ``setting`` beside ``competitor``."""
    rival = None
    if competitor == "training":
        argv = _train_argv(tmp / "rival", 100_000)
        rival = subprocess.Popen(argv, cwd=REPO, env=_env(setting), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    elif competitor == "python loop":
        rival = _loop()
    try:
        if rival is not None:
            time.sleep(lead_s)
        proc = subprocess.run(
            _train_argv(tmp / "measured", steps), cwd=REPO, env=_env(setting),
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    return float(json.loads(proc.stdout)["tokens_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--lead-s", type=float, default=20.0, help="competitor's head start")
    parser.add_argument(
        "--later-steps", type=int, default=5, help="steps before the later loop starts"
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--competitors", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS)
    )
    parser.add_argument(
        "--evaluation", type=int, default=0, metavar="N",
        help="measure instead the evaluation after training, on N questions: alone and with a "
        "Python loop that starts when training ends",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.evaluation < 0:
        parser.error("--evaluation takes a number of questions (0: measure training steps)")

    from tunesmith.bench.machine import describe, one_line

    if args.evaluation:
        return evaluation_table(args, describe() | {"omp_wait": "per row"}, one_line)

    results: dict[str, dict[str, list[float]]] = {
        s: {c: [] for c in args.competitors} for s in args.settings
    }
    loop_share: dict[str, list[float]] = {s: [] for s in args.settings}
    with tempfile.TemporaryDirectory(prefix="tunesmith-sharing-") as tmp:
        for rnd in range(args.rounds):
            for competitor in args.competitors:
                for setting in args.settings:
                    extra = ""
                    if competitor == "python loop, later":
                        alone = loop_alone()
                        tok_s, rate = measure_later(
                            setting, args.steps, args.later_steps, Path(tmp)
                        )
                        loop_share[setting].append(rate / alone)
                        extra = f", the loop at {rate / alone:.2f} of its speed alone"
                    else:
                        tok_s = measure(setting, competitor, args.steps, args.lead_s, Path(tmp))
                    results[setting][competitor].append(tok_s)
                    print(f"round {rnd + 1}: {setting:15s} beside {competitor:18s} {tok_s:7.1f} tok/s{extra}",
                          file=sys.stderr, flush=True)  # fmt: skip
    med = {s: {c: statistics.median(v) for c, v in by.items()} for s, by in results.items()}
    loop_med = {s: statistics.median(v) for s, v in loop_share.items() if v}
    machine = describe() | {"omp_wait": "per row"}
    alone = [m["none"] for m in med.values() if "none" in m]
    fastest_alone = max(alone) if alone else None  # no "none" competitor: no slowdown column
    cols = ["setting"]
    for c in args.competitors:
        shared = [f"beside a {c} tok/s"] + (["slowdown"] if fastest_alone else [])
        cols += ["alone tok/s"] if c == "none" else shared
    if loop_med:
        cols += ["later loop's speed"]
    print("| " + " | ".join(cols) + " |")
    print("|---" + "|---:" * (len(cols) - 1) + "|")
    for setting, m in med.items():
        cells = [setting]
        for c in args.competitors:
            slowdown = c != "none" and fastest_alone
            cells += [f"{m[c]:.1f}"] + ([f"{fastest_alone / m[c]:.1f}x"] if slowdown else [])
        if loop_med:
            cells += [f"{loop_med[setting]:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    about = "slowdown: the fastest setting alone over this one shared. " if fastest_alone else ""
    print(f"\n{about}{one_line(machine)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": results, "medians": med,
                                               "later_loop_share": loop_share,
                                               "machine": machine}, indent=2))  # fmt: skip
    return 0


def evaluation_table(args, machine: dict, one_line) -> int:
    """``--evaluation``: the evaluation's seconds alone and beside a later loop, per setting."""
    runs: dict[str, dict[str, list[float]]] = {
        s: {"alone": [], "beside": [], "loop share": []} for s in args.settings
    }
    with tempfile.TemporaryDirectory(prefix="tunesmith-sharing-") as tmp:
        for rnd in range(args.rounds):
            for setting in args.settings:
                alone, _ = measure_evaluation(setting, args.evaluation, False, Path(tmp))
                loop_alone_rate = loop_alone()
                beside, rate = measure_evaluation(setting, args.evaluation, True, Path(tmp))
                row = runs[setting]
                row["alone"].append(alone)
                row["beside"].append(beside)
                row["loop share"].append(rate / loop_alone_rate)
                print(f"round {rnd + 1}: {setting:15s} evaluation {alone:.1f} s alone, "
                      f"{beside:.1f} s beside a later loop (the loop at "
                      f"{rate / loop_alone_rate:.2f} of its speed)", file=sys.stderr, flush=True)  # fmt: skip
    med = {s: {k: statistics.median(v) for k, v in row.items()} for s, row in runs.items()}
    print("| setting | evaluation alone s | beside a later loop s | slowdown | loop's speed |")
    print("|---|---:|---:|---:|---:|")
    for setting, m in med.items():
        print(f"| {setting} | {m['alone']:.1f} | {m['beside']:.1f} | "
              f"{m['beside'] / m['alone']:.1f}x | {m['loop share']:.2f}x |")  # fmt: skip
    print(f"\n{args.evaluation} questions after a 4-step demo training. {one_line(machine)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"evaluation": runs, "medians": med,
                                               "machine": machine}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
