"""Fine-tune a model: plan, clean the data, train with a PEFT method, evaluate, save.

With no arguments it fine-tunes the embedded SmolLM2-135M-Instruct with LoRA on the bundled
clinic text-to-SQL demo and prints base vs fine-tuned execution accuracy. CONFIG.yaml keys
equal the long flags (flags override the file). `--resume RUN_DIR` continues a run from its
last valid checkpoint.

`--nproc N` trains on N processes (GPUs) of this machine through torchrun; `torchrun -m
tunesmith train ...` and `accelerate launch -m tunesmith train ...` work too (see
docs/distributed.md).
"""

from __future__ import annotations

import argparse

from tunesmith.config import add_config_arguments

HELP = "fine-tune a model (plan, clean, train, evaluate, save)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config_file", nargs="?", metavar="CONFIG.yaml", help="YAML config (keys = long flags)"
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last valid checkpoint",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    import json
    import math
    import os
    import sys

    from tunesmith.commands._console import console, progress_factory, quiet_libraries
    from tunesmith.config import config_from_args
    from tunesmith.train.run import run_training

    quiet_libraries()
    if args.resume:
        from tunesmith.config import TrainConfig
        from tunesmith.errors import UserInputError

        given = [n for n in TrainConfig.model_fields if hasattr(args, n)]
        if given or args.config_file:
            # A resumed run must replay the same schedule; silently ignoring flags would lie.
            raise UserInputError(
                "--resume continues with the run's saved config.yaml; remove "
                + (", ".join("--" + n.replace("_", "-") for n in given) or args.config_file)
            )
    cfg = config_from_args(args, args.config_file)
    from tunesmith.distributed.launch import relaunch

    if args.resume:
        from tunesmith.rundir import RunDir

        cfg = RunDir(args.resume).config  # --nproc comes from the run
    extra = ("--json",) * args.json + ("--debug",) * bool(getattr(args, "debug", False))
    code = relaunch(cfg, args.resume, extra)
    if code is not None:
        return code
    out = console(stderr=args.json)
    result = run_training(
        cfg,
        resume=args.resume,
        say=lambda m: out.print(m, highlight=False),
        progress_factory=progress_factory(out),
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports
    summary = {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        # The last finite loss: with --on-nan skip a skipped step's loss is NaN (invalid JSON).
        "final_loss": next((x for x in reversed(result.losses) if math.isfinite(x)), None),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "train_seconds": round(result.train_seconds, 1),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "timings": {k: round(v, 1) for k, v in result.timings.items()},
        "metrics": result.eval["metrics"] if result.eval else None,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        from tunesmith.commands._console import eval_table

        if result.eval:
            out.print(eval_table(result.eval))
        out.print(
            f"run directory: {result.run_dir}  |  {result.steps} steps in {result.train_seconds:.0f} s "
            f"({result.tokens_per_s:.0f} trained tokens/s)  |  total {result.timings['total_s']:.0f} s"
        )
    return 0
