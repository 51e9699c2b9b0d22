"""Benchmarks on this machine.

latency  batch-1 forward and greedy-generation latency per PEFT method, as ratios to the base
         model (the shape of Table 1 in the LoRA paper): merged LoRA costs nothing extra,
         adapters and prefixes do.
train    training throughput against the TRL peer (offered when tunesmith.bench.train exists).
dpo      DPO throughput and memory against TRL's DPOTrainer, the same pairs, LoRA and batch.
serve    the OpenAI server under concurrent chat requests: requests/s, generated tokens/s,
         time to first token and end-to-end latency at concurrency 1/4/16, one adapter vs a mix.
"""

from __future__ import annotations

import argparse

from tunesmith.bench import BENCHMARKS

HELP = (
    "benchmarks: batch-1 latency (latency), training throughput (train), DPO (dpo), serving (serve)"
)


def available_benchmarks() -> dict[str, object]:
    """The benchmark modules of this build; a missing one is skipped, a broken one raises."""
    from tunesmith.cli import import_available

    return import_available(BENCHMARKS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, mod in available_benchmarks().items():
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=(mod.__doc__ or mod.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: accept `bench latency --debug` without resetting a `bench --debug` given earlier.
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        mod.add_arguments(p)
        p.set_defaults(_bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    from tunesmith.commands._console import quiet_libraries

    quiet_libraries()
    return int(args._bench_run(args) or 0)
