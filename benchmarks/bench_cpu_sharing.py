"""Training speed when another CPU-bound process shares the cores, per OpenMP wait setting.

Runs the demo recipe (examples/smollm2_lora.yaml) for ``--steps`` steps and reads its trained
tokens/s, alone and while a competitor already runs: a second demo training (started
``--lead-s`` seconds earlier, so it has chosen its own setting on an idle machine, as a user's
first job would) or a one-thread pure-Python loop (a test run, a data script). Settings:

* ``libgomp default``: GOMP_SPINCOUNT=300000 in both processes, what torch does unconfigured
  (and so what a TRL SFTTrainer run gets);
* ``tunesmith``: nothing set, tunesmith.cpu_share decides in each process at start-up;
* ``passive``: OMP_WAIT_POLICY=PASSIVE in both.

Goal (issue 25): with one competing CPU-bound process a demo step is at most ~2.5x slower
than alone, without losing speed alone. Medians over ``--rounds`` alternated rounds.

Usage:
    python benchmarks/bench_cpu_sharing.py                 # 1 round, ~8 min on 2 cores
    python benchmarks/bench_cpu_sharing.py --rounds 3 --json sharing.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "libgomp default": {"GOMP_SPINCOUNT": "300000"},
    "tunesmith": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
COMPETITORS = ("none", "training", "python loop")
CLEARED = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "TUNESMITH_GOMP_AUTO", "OMP_NUM_THREADS")


def _env(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, "HF_HUB_OFFLINE": "1", **SETTINGS[setting]}


def _train_argv(out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "tunesmith", "train", "examples/smollm2_lora.yaml",
        "--max-steps", str(steps), "--eval-limit", "1", "--skip-base-eval",
        "--output", str(out), "--overwrite", "--json",
    ]  # fmt: skip


def measure(setting: str, competitor: str, steps: int, lead_s: float, tmp: Path) -> float:
    """Trained tokens/s of one demo training under ``setting`` beside ``competitor``."""
    rival = None
    if competitor == "training":
        argv = _train_argv(tmp / "rival", 100_000)
        rival = subprocess.Popen(argv, cwd=REPO, env=_env(setting), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    elif competitor == "python loop":
        rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
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
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--competitors", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS)
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from tunesmith.bench.machine import describe, one_line

    results: dict[str, dict[str, list[float]]] = {
        s: {c: [] for c in args.competitors} for s in args.settings
    }
    with tempfile.TemporaryDirectory(prefix="tunesmith-sharing-") as tmp:
        for rnd in range(args.rounds):
            for competitor in args.competitors:
                for setting in args.settings:
                    tok_s = measure(setting, competitor, args.steps, args.lead_s, Path(tmp))
                    results[setting][competitor].append(tok_s)
                    print(f"round {rnd + 1}: {setting:15s} beside {competitor:11s} {tok_s:7.1f} tok/s",
                          file=sys.stderr, flush=True)  # fmt: skip
    med = {s: {c: statistics.median(v) for c, v in by.items()} for s, by in results.items()}
    machine = describe() | {"omp_wait": "per row"}
    alone = [m["none"] for m in med.values() if "none" in m]
    fastest_alone = max(alone) if alone else float("nan")
    cols = ["setting"]
    for c in args.competitors:
        cols += ["alone tok/s"] if c == "none" else [f"beside a {c} tok/s", "slowdown"]
    print("| " + " | ".join(cols) + " |")
    print("|---" + "|---:" * (len(cols) - 1) + "|")
    for setting, m in med.items():
        cells = [setting]
        for c in args.competitors:
            cells += [f"{m[c]:.1f}"] + ([] if c == "none" else [f"{fastest_alone / m[c]:.1f}x"])
        print("| " + " | ".join(cells) + " |")
    print(f"\nslowdown: the fastest setting alone over this one shared. {one_line(machine)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": results, "medians": med,
                                               "machine": machine}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
