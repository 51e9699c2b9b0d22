"""A local web app: launch, watch, compare and talk to runs from the browser.

Lists the run directories of the workspace (runs/<name>/ below it), with live loss, learning
rate, gradient norm and throughput curves while they train; a New-run form built from the
training config with the memory plan as you type; Launch, Stop (a checkpoint) and Resume;
the cleaning report and masking preview of a data file; compare; chat through the same
OpenAI-compatible API as `tunesmith serve`; merge and export with their verification.

Binds to 127.0.0.1 by default. Another --host needs --api-key (or TUNESMITH_API_KEY): the
printed URL then carries ?token=KEY. SIGTERM or Ctrl-C stops the server; runs it launched go
on training (a restarted UI shows them).

  tunesmith ui                      # the current directory, http://127.0.0.1:7860
  tunesmith ui --workspace ~/tuning --port 8080
"""

from __future__ import annotations

import argparse

HELP = "local web app: launch, watch, compare and chat with runs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=".", help="folder of the runs (default: current dir)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--api-key", help="token required on every request (default: $TUNESMITH_API_KEY)"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    from pathlib import Path

    from tunesmith.errors import UserInputError
    from tunesmith.serve import API_KEY_ENV

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    loopback = is_loopback(args.host)
    if not loopback and not api_key:
        raise UserInputError(
            f"--host {args.host} makes the UI reachable from other machines; set --api-key "
            f"(or {API_KEY_ENV}) so that only holders of the token can use it"
        )
    if not Path(args.workspace).is_dir():
        raise UserInputError(f"--workspace {args.workspace}: not a directory")
    if not 0 <= args.port <= 65535:
        raise UserInputError(f"--port {args.port}: expected 0..65535")
    from tunesmith.commands._console import quiet_libraries

    quiet_libraries()
    import uvicorn

    from tunesmith.ui.app import create_app

    app = create_app(args.workspace, api_key=api_key, loopback=loopback)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/" + (f"?token={api_key}" if api_key else "")
    print(f"tunesmith ui: {Path(args.workspace).resolve()} on {url}", flush=True)
    # As serve: uvicorn stops gracefully on SIGTERM, then re-raises it under this no-op handler.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5)
    return 0
