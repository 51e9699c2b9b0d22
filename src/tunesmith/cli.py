"""The ``tunesmith`` command line: one table of commands, one thin module per command.

Each command module in :mod:`tunesmith.commands` defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import torch and friends only
inside ``run`` so that ``tunesmith --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from tunesmith.errors import TunesmithError

# name -> module; the order is the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "plan": "tunesmith.commands.plan",
    "clean": "tunesmith.commands.clean",
    "data": "tunesmith.commands.data",
    "train": "tunesmith.commands.train",
    "eval": "tunesmith.commands.eval",
    "chat": "tunesmith.commands.chat",
    "merge": "tunesmith.commands.merge",
    "export": "tunesmith.commands.export",
    "compare": "tunesmith.commands.compare",
    "methods": "tunesmith.commands.methods",
    "bench": "tunesmith.commands.bench",
    "report": "tunesmith.commands.report",
    "push": "tunesmith.commands.push",
    "serve": "tunesmith.commands.serve",
    "ui": "tunesmith.commands.ui",
}


def import_available(table: dict[str, str]) -> dict[str, object]:
    """Import each ``name -> module`` of a command table; a missing module is skipped."""
    mods = {}
    for name, path in table.items():
        try:
            mods[name] = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            # A command whose module is not in this build is simply not offered.
            if exc.name != path:
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Fine-tune LLMs with parameter-efficient methods on the hardware you have.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in import_available(COMMANDS).items():
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=(mod.__doc__ or mod.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: without it the subcommand's default would reset `tunesmith --debug CMD`.
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks"
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args._run(args) or 0)
    except TunesmithError as exc:
        if args.debug:
            raise
        print(f"tunesmith {args.command}: error: {exc}", file=sys.stderr)
        from tunesmith.distributed.exit_status import note

        note(exc.exit_code)  # for a `--nproc N` parent: this rank's status, not torchrun's 1
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tunesmith {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the safety net: a bug or an unmapped failure, never a traceback
        if args.debug:
            raise
        from tunesmith.crashlog import describe

        print(describe(args.command, exc), file=sys.stderr)
        from tunesmith.distributed.exit_status import note

        note(1)
        return 1


def entry() -> None:
    """The ``tunesmith`` command and ``python -m tunesmith`` (how launchers start each rank)."""
    from tunesmith import cpu_share

    # Before torch loads: it fixes how idle OpenMP threads wait.
    cpu_share.configure(watched=cpu_share.watched_command(sys.argv[1:]))
    exit_process(main())


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; a rank of a distributed run skips the interpreter's shutdown.

    A gloo worker thread can still be dropping the last reference to a tensor Python owns
    while the interpreter finalizes; the GIL it then asks for stops it with ``pthread_exit``,
    whose unwinding through C++ ``noexcept`` frames calls ``std::terminate`` (SIGABRT), after
    a run that had finished and saved everything. It happened once in CI and once in ~90
    two-rank DeepSpeed runs pinned to one busy core (pytorch/pytorch#179291 describes the
    race; it was closed unfixed). Everything a run writes is closed and renamed into place
    before the command returns, so a rank only flushes the console and the log handlers.
    A single process exits normally.
    """
    try:  # not distributed.world_size_from_env: importing it loads torch, which --help skips
        ranks = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        ranks = 1
    if ranks <= 1:
        sys.exit(code)
    import contextlib
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
