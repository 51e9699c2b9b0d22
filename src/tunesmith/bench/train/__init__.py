"""Training throughput against the TRL peer: same model, data, adapter, batch, steps and seed.

Three variants train the same adapter on the same cleaned clinic demo data (``--adapter``:
``qv``, the default, the ``seed`` recipe: LoRA r=8, alpha=32, q_proj/v_proj, dropout 0.05;
``all``, the ``default`` recipe, the demo's: LoRA r=4, alpha=32 on every linear projection, no
dropout; ``dora``, that recipe as DoRA, peft's ``use_dora`` on the TRL side), each in its own
child process (so imports, caches and peak RSS are its own), alternated ``tunesmith, trl-default, trl-tuned, tunesmith, ...`` so that drift in
machine load hits all of them alike:

tunesmith    :class:`tunesmith.train.loop.TrainLoop` as ``tunesmith train`` drives it
             (``--precision auto``: a bf16-stored frozen base where the hardware has native bf16).
trl-default  TRL ``SFTTrainer`` as a user writes it: ``SFTConfig`` defaults (gradient
             checkpointing on, completion-only loss on prompt/completion data) and fp32, the
             setting the CPU defaults leave (``bf16=True`` without ``use_cpu`` refuses to start).
trl-tuned    TRL with its speed options: bf16 autocast, padding-free batches, no checkpointing.

Only the optimizer steps after one warm-up step are timed (callbacks stamp each step's end).
Trained tokens are positions whose next token carries loss; processed tokens are the
non-padding positions the step computes (tunesmith's passes hold the examples' common prompt
prefix once, so it counts once there: the ratio to the ceiling stays a measure of how fast the
hardware runs the work done, not of work avoided). The useful work of a step, the same formula
for every variant, is::

    FLOPs = 4 * N_body * processed + 4 * V * C * trained + 6 * N_adapter * processed

``N_body``: frozen linear weights of the decoder blocks (forward 2N plus the input-gradient
half of the backward 2N; no weight gradients); ``V * C``: the vocabulary projection, needed
only where a loss is taken; ``N_adapter``: trainable adapter weights (forward, input and
weight gradients: 6N). Attention score products (~3% at these ~90-token records) and
recomputation by gradient checkpointing are not counted: they are not useful work. See
Kaplan et al., "Scaling Laws for Neural Language Models" (arXiv:2001.08361), Sec. 2.1, for
the 2N-forward / 4N-backward accounting this splits. Achieved FLOP/s are divided by the
``2048^3`` matmul ceiling measured on this machine in the same run, at the variant's
compute precision.

The shape-matched limit is the honest floor for this workload: every GEMM that tunesmith's
timed steps dispatch (same shapes, dtype and operand layouts, forward and backward, the head
at trained positions, the attention's products) recorded by running those steps again after
the run, then timed alone, best of 3 (``gemm_limit.py``). ``shape_limit_s`` is that time per
step and ``shape_limit_ratio`` its share of the measured steps' time. Each product is timed
warm there, on operands in cache; ``order_limit_s`` / ``order_limit_ratio`` time the same calls
once each in the steps' order on buffers laid out as the step's (one per weight, for its
forward and backward), so the weights come from memory as in a step. The TRL rows get the
same workload's limits per trained token.

Eval loss is the same for all variants: tunesmith's rendering of the held-out set, mean
token loss over assistant tokens, computed with each model in the precision it trained in.

The table's machine line names the CPU, its bf16 instruction sets, the threads, each
variant's OpenMP wait setting and whether tunesmith's CPU kernels ran (``on, AMX tiles``,
``on`` or ``off (why)``), per round where the rounds differ: a kernel source edited while the
bench runs renames their build, and the later rounds run without it.
"""

# This module is the subcommand (its docstring is the --help text); the parts: measure (rows,
# the FLOP formula, the clock, eval loss), data (the cleaned demo), tunesmith_side (the
# library's own training steps), gemm_limit (the shape-matched limit), trl_peer (the only
# module that imports trl), runner (child processes, alternated rounds) and summary (ratios,
# final lines, table).

from __future__ import annotations

import argparse
import sys

from tunesmith.bench.run_options import add_run_arguments, print_report, steps_and_reps
from tunesmith.bench.train import trl_peer
from tunesmith.bench.train.measure import ADAPTERS, BenchSettings
from tunesmith.bench.train.runner import VARIANTS, bench_train
from tunesmith.bench.train.summary import final_lines, results_table

HELP = "training throughput, memory and loss vs TRL SFTTrainer (default and tuned)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        steps=30,
        quick="12 steps, 1 round (< 15 min on 2 CPU cores)",
        variants=VARIANTS,
    )
    parser.add_argument("--eval-limit", type=int, default=64, help="held-out records for eval loss")
    parser.add_argument(
        "--adapter",
        choices=tuple(ADAPTERS),
        default="qv",
        help="what every variant trains: qv (LoRA r=8 on q/v, dropout 0.05; the default), all "
        "(the demo's LoRA r=4 on every linear projection) or dora (that as DoRA)",
    )


def run(args: argparse.Namespace) -> int:
    steps, reps = steps_and_reps(
        args, quick=(12, 1), trl_variants=trl_peer.VARIANTS, trl_available=trl_peer.available()
    )
    settings = BenchSettings(
        model=args.model,
        steps=steps,
        batch_size=args.batch_size,
        eval_limit=args.eval_limit,
        threads=args.threads,
        adapter=args.adapter,
    )
    report = bench_train(
        settings,
        reps=reps,
        variants=tuple(args.variants),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print_report(report, args.json, results_table, final_lines(report["summary"]))
    return 0
