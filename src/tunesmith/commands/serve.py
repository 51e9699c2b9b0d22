"""Serve runs behind an OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions.

Runs that share a base are served by one loaded base: each run is a model name (its directory
name, or NAME in --adapter NAME=PATH), the base is one too, and a request picks one by
"model". Concurrent requests are decoded together, whichever adapters they use. Binds to
127.0.0.1 by default; --api-key (or TUNESMITH_API_KEY) requires "Authorization: Bearer KEY".
SIGTERM or Ctrl-C stops accepting, finishes the requests in flight and exits 0.

  tunesmith serve runs/sql runs/support --port 8000
  tunesmith serve --model embedded --adapter sql=runs/sql/adapter
  tunesmith serve runs/sql --engine vllm       # vLLM's server, same base + LoRA adapters
  tunesmith serve runs/sql --engine llamacpp   # the run's exported .gguf via llama.cpp
"""

from __future__ import annotations

import argparse

HELP = "OpenAI-compatible server: many runs on one loaded base, batched requests"

ENGINES = ("tunesmith", "vllm", "llamacpp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="*", metavar="RUN_DIR", help="runs, adapter dirs or merged checkpoints"
    )
    p.add_argument("--model", help="base model (or merged checkpoint) to serve; base for --adapter")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the adapter at PATH as model NAME (repeatable)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNESMITH_API_KEY)"
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="tunesmith",
        help="tunesmith (default), vllm (vLLM's server) or llamacpp (a run's exported .gguf)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (16)")
    p.add_argument(
        "--max-queue", type=int, default=64, help="waiting requests before answering 429 (64)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=256, help="answer limit when a request sets none (256)"
    )
    p.add_argument(
        "--threads", type=int,
        help="torch CPU threads, fixed (default: all cores, fewer while other processes need them)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import os
    import signal

    from tunesmith.errors import UserInputError
    from tunesmith.serve import API_KEY_ENV
    from tunesmith.serve.models import parse_adapter_flags

    adapters = parse_adapter_flags(args.adapter)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    for flag in ("max_batch", "max_queue", "max_tokens", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserInputError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.engine != "tunesmith":
        return _external(args, adapters, api_key)
    from tunesmith.commands._console import quiet_libraries

    quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import uvicorn

    from tunesmith.serve import serve

    app = serve(
        *args.runs,
        model=args.model,
        adapters=adapters,
        api_key=api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        default_max_tokens=args.max_tokens,
        watch_cores=not args.threads,  # --threads: the user's count, never changed
    )
    names = ", ".join(app.state.server.models)
    print(f"tunesmith serve: {names} on http://{args.host}:{args.port}/v1", flush=True)
    # uvicorn handles SIGTERM and SIGINT: it stops accepting, lets the requests in flight finish,
    # then raises the signal again under the handler it found. For SIGTERM that handler is a
    # no-op, so a graceful stop exits 0 (Ctrl-C still ends as an interrupt, 130).
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_keep_alive=5)
    return 0


def _external(args: argparse.Namespace, adapters: dict[str, str], api_key: str | None) -> int:
    import subprocess

    from tunesmith.errors import UserInputError
    from tunesmith.serve import external

    if args.engine == "vllm":
        argv = external.vllm_command(
            args.runs, model=args.model, adapters=adapters, host=args.host, port=args.port,
            api_key=api_key,
        )  # fmt: skip
    else:
        if len(args.runs) != 1 or adapters:
            raise UserInputError("--engine llamacpp serves one run's .gguf (or one .gguf file)")
        argv = external.llamacpp_command(
            args.runs[0], host=args.host, port=args.port, api_key=api_key
        )
    external.require(args.engine)
    print("tunesmith serve: " + " ".join(argv), flush=True)
    return subprocess.call(argv)
