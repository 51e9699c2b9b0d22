"""Benchmark training against TRL: tunesmith vs TRL SFTTrainer (defaults, and tuned).

The same run as ``tunesmith bench train``; see :mod:`tunesmith.bench.train` for what is
measured and the FLOP formula. Its last six lines are ``speedup_vs_trl_default=X``,
``speedup_vs_trl_tuned=Y``, ``peak_rss_ratio=Z`` (tunesmith over TRL default),
``ceiling_ratio=W`` (tunesmith's useful FLOP/s over the matmul ceiling at its precision),
``shape_limit_ratio=S`` (the time of the steps' own GEMMs alone, each warm, over the steps'
time) and ``order_limit_ratio=O`` (the same GEMMs once each in the steps' order, their
weights coming from memory as in a step).

Goals (issue 8, 2-core CPU, demo config): speedup_vs_trl_default >= 3,
speedup_vs_trl_tuned >= 1.3, peak_rss_ratio <= 0.75, ceiling_ratio >= 0.5, eval loss no
worse than TRL's within run-to-run noise. Issue 25: on AMX CPUs ceiling_ratio >= 0.35 and
shape_limit_ratio >= 0.7; on AVX512-BF16 CPUs without AMX ceiling_ratio >= 0.55 (an AMX CPU
runs its matmuls without AMX under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``; the machine line
then says so).

Usage:
    python benchmarks/bench_train.py --quick              # 12 steps, 1 round, < 15 min
    python benchmarks/bench_train.py --steps 30 --reps 3  # the full comparison
    python benchmarks/bench_train.py --quick --json bench_train.json
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/bench_train.py --variants tunesmith
"""

from __future__ import annotations

import argparse
import sys

from tunesmith.bench import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    train.add_arguments(parser)
    return train.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
