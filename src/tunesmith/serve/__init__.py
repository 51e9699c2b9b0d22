"""``tunesmith serve``: an OpenAI-compatible server for runs, many adapters on one base.

``serve(...)`` loads the models and returns the ASGI app (FastAPI), which uvicorn runs or a
test drives::

    from tunesmith import serve

    app = serve("runs/sql", "runs/chat")  # both adapters and their shared base, one load
    # uvicorn.run(app, host="127.0.0.1", port=8000)

Modules: ``models`` (all loading), ``batch`` (the left-padded KV cache of the running batch),
``sampling``, ``text`` (streamed text and stop strings), ``engine`` (the per-step batching
thread), ``schemas`` (OpenAI's request bodies and errors), ``app`` (the endpoints) and
``external`` (command builders for vLLM and llama.cpp's servers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

API_KEY_ENV = "TUNESMITH_API_KEY"


def serve(
    *run_dirs: str | Path,
    model: str | None = None,
    adapters: Mapping[str, str | Path] | None = None,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    default_max_tokens: int = 256,
    dtype: Any = None,
    watch_cores: bool = True,
):
    """Load runs (or ``model`` with named ``adapters``) and return the OpenAI-compatible app.

    Args:
        run_dirs: run directories, adapter directories or merged checkpoints; each is served
            under its directory name, and the runs that share a base share one loaded base.
        model: base model (or merged checkpoint) to serve; the base for ``adapters``.
        adapters: ``{name: path}`` of adapters served on ``model``.
        api_key: require ``Authorization: Bearer <api_key>`` on ``/v1/*`` (default: the
            ``TUNESMITH_API_KEY`` environment variable, else no key).
        max_batch: requests decoded together per loaded model.
        max_queue: requests that may wait for a row; past it the server answers 429.
        default_max_tokens: the answer limit when a request gives no ``max_tokens``.
        dtype: torch dtype of the weights (default: the checkpoint's own).
        watch_cores: on CPU, decode on the cores other processes leave free, checked between
            forward passes (``tunesmith.core_watch``); False keeps the thread count fixed (the
            command's ``--threads``).

    Returns:
        A FastAPI app; ``app.state.server`` holds the served models and their engines.
    """
    from tunesmith.serve.app import Server, create_app
    from tunesmith.serve.models import load_served_models

    served = load_served_models(run_dirs, model=model, adapters=adapters, dtype=dtype)
    server = Server(
        served, max_batch=max_batch, max_queue=max_queue, default_max_tokens=default_max_tokens,
        watch_cores=watch_cores,
    )  # fmt: skip
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return create_app(server, api_key=key)


from tunesmith._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, serve)
