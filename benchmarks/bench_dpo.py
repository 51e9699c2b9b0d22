"""Benchmark DPO against TRL: tunesmith vs TRL DPOTrainer (defaults, and tuned).

The same run as ``tunesmith bench dpo``; see :mod:`tunesmith.bench.dpo` for what is measured
and what counts as a trained token. Its last three lines are ``speedup_vs_trl_default=X``,
``speedup_vs_trl_tuned=Y`` and ``peak_rss_ratio=Z`` (tunesmith over TRL default), after a
``machine: ...`` line.

Goals (issue 21, demo config): speedup_vs_trl_default >= 2, peak_rss_ratio <= 0.8.

Usage:
    python benchmarks/bench_dpo.py --quick              # 4 steps, 1 round: a smoke run
    python benchmarks/bench_dpo.py --steps 20 --reps 3  # the full comparison
    python benchmarks/bench_dpo.py --quick --json bench_dpo.json
"""

from __future__ import annotations

import argparse
import sys

from tunesmith.bench import dpo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dpo.add_arguments(parser)
    return dpo.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
