"""Benchmarks behind ``tunesmith bench``: one module per subcommand.

A benchmark module defines ``HELP`` (one line), a module docstring (its description),
``add_arguments(parser)`` and ``run(args) -> int``, like a command module, and imports torch
only inside ``run``. ``tunesmith bench`` offers every module listed in :data:`BENCHMARKS`
that imports; one that is not in this build is simply not offered. To add a benchmark, write
its module (or package, as ``train`` is) and add one line here.
"""

from __future__ import annotations

# subcommand -> module; the order is the order `tunesmith bench --help` lists them.
BENCHMARKS: dict[str, str] = {
    "latency": "tunesmith.bench.latency",
    "train": "tunesmith.bench.train",  # training throughput vs the TRL peer
    "dpo": "tunesmith.bench.dpo",  # DPO throughput and memory vs TRL's DPOTrainer
    "serve": "tunesmith.bench.serve",  # the OpenAI server under concurrent requests
}
