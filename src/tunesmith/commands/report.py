"""(Re)write a run's report.html: loss, learning-rate, grad-norm and throughput curves, the
base-vs-adapted eval table with sample generations, the memory plan and the resolved config.

The page is self-contained (inline CSS, plots as data URIs) and the plots are also saved as
PNG files beside it. A run that stopped early still gets a report that says what is missing.

Example:
  tunesmith report runs/lora-demo --open
"""

from __future__ import annotations

import argparse

HELP = "write report.html for a run directory (curves, eval table, config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (runs/<name>)")
    parser.add_argument(
        "--open", action="store_true", help="open the report in the default web browser"
    )
    parser.add_argument("--json", action="store_true", help='print {"report": PATH} on stdout')


def run(args: argparse.Namespace) -> int:
    import json
    import webbrowser

    from tunesmith.report import write_report

    path = write_report(args.run_dir).resolve()
    print(json.dumps({"report": str(path)}) if args.json else f"wrote {path}")
    if args.open:
        webbrowser.open(path.as_uri())
    return 0
