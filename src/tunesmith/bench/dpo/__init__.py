"""DPO throughput and memory against TRL's DPOTrainer: same model, pairs, adapter, batch, steps.

Three variants train the same LoRA (r=8, alpha=32, q_proj/v_proj, dropout 0.05) with DPO
(beta 0.1, sigmoid loss) on the same cleaned clinic demo pairs (:mod:`tunesmith.demo.pairs`:
the canonical SQL against a plausible wrong query), one epoch of ``--steps`` steps of
``--batch-size`` pairs, same lr, cosine schedule, warm-up and seq-len. Each runs in its own
child process (so imports, caches and peak RSS are its own), alternated ``tunesmith,
trl-default, trl-tuned, tunesmith, ...`` so that drift in machine load hits all alike:

tunesmith    ``tunesmith train --objective dpo``'s own steps (``--precision auto``: a
             bf16-stored frozen base where the hardware has native bf16); the reference is
             the base with the adapter switched off, scored live in every step.
trl-default  TRL ``DPOTrainer`` + peft ``LoraConfig``, ``DPOConfig`` defaults except what must
             match: gradient checkpointing on, fp32 (the CPU default a user is left with),
             reference = the adapter switched off, live.
trl-tuned    TRL with its speed options for DPO on a CPU: bf16 autocast, no checkpointing,
             ``precompute_ref_log_probs`` (the reference scored once before the timed steps;
             the ``setup s`` column holds it). TRL's ``padding_free`` falls back to padding
             for DPO, so it is not used.

Only the optimizer steps after one warm-up step are timed. Trained tokens, the same count on
both sides: the chosen plus the rejected completion tokens of every pair in a step, each
through its end-of-turn token (TRL's tokenization also keeps the template's newline after it;
that token is not counted). Peak RSS is the child process's high-water mark, model loading
included. The DPO loss is the mean of the last five steps' losses.
"""

# This module is the subcommand (its docstring is the --help text); the parts: measure (the
# settings, what a trained token is), data (the cleaned pairs), tunesmith_side, trl_side (the
# only module that imports trl), runner (child processes) and summary (ratios, lines, table).
# The child runner, the clock, the row and the table are the training bench's.

from __future__ import annotations

import argparse
import sys

from tunesmith.bench.dpo import trl_side
from tunesmith.bench.dpo.measure import DpoSettings
from tunesmith.bench.dpo.runner import VARIANTS, bench_dpo
from tunesmith.bench.dpo.summary import final_lines, results_table
from tunesmith.bench.run_options import add_run_arguments, print_report, steps_and_reps
from tunesmith.bench.train.trl_peer import available as trl_available

HELP = "DPO throughput and memory vs TRL DPOTrainer (default and tuned)"
QUICK = (4, 1)  # steps, rounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        steps=20,
        quick=f"{QUICK[0]} steps, {QUICK[1]} round (a smoke run)",
        variants=VARIANTS,
        unit="pairs",
    )


def run(args: argparse.Namespace) -> int:
    steps, reps = steps_and_reps(
        args, quick=QUICK, trl_variants=trl_side.VARIANTS, trl_available=trl_available()
    )
    settings = DpoSettings(
        model=args.model, steps=steps, batch_size=args.batch_size, threads=args.threads
    )
    report = bench_dpo(
        settings,
        reps=reps,
        variants=tuple(args.variants),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    from tunesmith.bench.machine import one_line

    lines = [f"machine: {one_line(report['machine'])}", *final_lines(report["summary"])]
    print_report(report, args.json, results_table, lines)
    return 0
