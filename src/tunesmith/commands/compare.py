"""Train several PEFT methods on the same data, steps and seed, and compare them.

Each method in --methods is trained as `tunesmith train` would (runs under OUTPUT/<method>/);
the data is cleaned once and every method sees the same examples. The table lists trainable
parameters and their share of the base, the task metric (execution accuracy on the demo,
ROUGE-L otherwise), eval perplexity, forgetting (rise of perplexity on a bundled general-text
set over the base model's), peak memory, train time and batch-1 latency.
OUTPUT/compare.json holds the rows (also tokens/s) and shared settings, OUTPUT/compare.png
plots the task metric against trainable parameters. Without --lr each method uses its own
default learning rate (see the lr column). A method that fails gets a row with its error; the others go on.
With --objective dpo|orpo|simpo|kto every method trains on preference pairs (KTO: unpaired
examples) with that objective, and the table adds the held-out preference accuracy and the
mean reward margin of the base and of each method; a method the objective refuses (the
virtual-token methods prompt, prefix and mam) gets an error row.

--lr-search tries each method at its default learning rate x {1/3, 1, 3} (--lr-grid to change
the multipliers), every rate training on the cleaned training data minus a seeded 10%
validation split (8 to 200 examples) and scored on that split; a rate whose loss blows up
(non-finite, or 1.5x its start after warm-up) is stopped early. While a method's best rate is
the highest or lowest it tried, the search steps past that edge by the grid's ratio (at most 2
more rates; 1 with --quick). Each method is then reported
at its best validation rate (lr column) with that run's test-set figures, and
OUTPUT/compare_forgetting.png plots every rate's validation score against its forgetting.
Runs go under OUTPUT/<method>/lr-<rate>/; running the same command again after an
interruption trains only the rates not finished. --quick: at most 50 steps per run and 40
validation examples scored per rate (the test set keeps --eval-limit).

Example: tunesmith compare --methods lora,qlora,houlsby,prefix,mam,full --max-steps 150
         tunesmith compare --objective dpo --data pairs.jsonl --methods lora,houlsby,full
         tunesmith compare examples/smollm2_compare.yaml --lr-search --quick --methods lora,full
"""

from __future__ import annotations

import argparse

from tunesmith.commands._args import positive_int
from tunesmith.config import add_config_arguments

HELP = "train several methods on the same data and budget; compare quality, memory, time"

DEFAULT_METHODS = "lora,qlora,houlsby,prefix,mam,full"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config_file", nargs="?", metavar="CONFIG.yaml", help="YAML config (keys = long flags)"
    )
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma list of methods to compare (default: {DEFAULT_METHODS})",
    )
    p.add_argument(
        "--no-latency", dest="latency", action="store_false", help="skip the batch-1 latency timing"
    )
    p.add_argument(
        "--latency-runs",
        type=positive_int,
        default=10,
        help="timed forward passes per model (median)",
    )
    p.add_argument(
        "--lr-search",
        action="store_true",
        help="search each method's learning rate on a validation split of the training data "
        "(default x 1/3, 1, 3) and report each at its best",
    )
    p.add_argument(
        "--lr-grid",
        metavar="M1,M2,...",
        help="--lr-search multipliers of each method's default learning rate (default 0.333,1,3)",
    )
    p.add_argument(
        "--search-steps",
        type=positive_int,
        help="--lr-search: steps of every run (default: --max-steps; with --quick at most 50)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="--lr-search in short: at most 50 steps per run, 40 validation examples per rate",
    )
    p.add_argument("--json", action="store_true", help="print compare.json on stdout")
    add_config_arguments(p)
    for action in p._actions:  # --methods replaces train's --method: hide it (run() refuses it)
        if action.dest == "method":
            action.help = argparse.SUPPRESS


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from tunesmith.commands._console import console, progress_factory, quiet_libraries
    from tunesmith.compare import compare, parse_methods
    from tunesmith.compare.latency import LatencySettings
    from tunesmith.compare.table import compare_table, search_table
    from tunesmith.config import config_from_args
    from tunesmith.errors import ConfigError, UserInputError, WorkFailed

    methods = parse_methods(args.methods)  # exit 2 on a bad name, before anything loads
    if hasattr(args, "method"):
        raise UserInputError("compare trains every method in --methods; drop --method")
    if args.latency_runs < 1:
        raise ConfigError("latency-runs", args.latency_runs, "an integer >= 1")
    quiet_libraries()
    cfg = config_from_args(args, args.config_file)
    search = _search_settings(args, cfg)
    out = console(stderr=args.json)
    result = compare(
        methods,
        base_config=cfg,
        latency=args.latency,
        latency_settings=LatencySettings(runs=args.latency_runs),
        say=lambda m: out.print(m, highlight=False, markup=False),
        progress_factory=progress_factory(out),
        search=search,
    )
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        print()
    else:
        rows = ([result.base] if result.base else []) + result.rows
        s = result.settings
        steps = f"{s['max_steps']} steps" if s["max_steps"] else f"{s['epochs']} epochs"
        title = f"{s['model']}: {steps}, batch {s['batch_size']}, seed {s['seed']}, eval n={s['eval_n']}"
        out.print(compare_table(rows, result.metric_name, title))
        if result.search:
            out.print(search_table(result.search, result.metric_name))
        plots = [p.name for p in (result.plot, result.forgetting_plot) if p is not None]
        out.print(f"compare.json{''.join(' and ' + p for p in plots)} in {result.output}")
    if all(r.error for r in result.rows):
        raise WorkFailed("every method failed; see the error column")
    return 0


def _search_settings(args: argparse.Namespace, cfg):
    """The ``--lr-search`` settings, or None; the search flags without it are refused."""
    from tunesmith.compare.grid import DEFAULT_GRID, parse_grid
    from tunesmith.compare.search import SearchSettings
    from tunesmith.errors import UserInputError

    if not args.lr_search:
        given = [f for f, v in (("--lr-grid", args.lr_grid), ("--search-steps", args.search_steps),
                                ("--quick", args.quick)) if v]  # fmt: skip
        if given:
            raise UserInputError(f"{', '.join(given)} only apply with --lr-search")
        return None
    grid = parse_grid(args.lr_grid) if args.lr_grid else DEFAULT_GRID
    if args.quick:
        return SearchSettings.quick(cfg.max_steps, grid, args.search_steps)
    return SearchSettings(grid, args.search_steps)
