"""Tiny runs to serve and a real uvicorn server on 127.0.0.1 in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from tests.export.adapters import make_adapter


def make_run(base_dir: Path, run_dir: Path, seed: int) -> Path:
    """A run directory with a perturbed LoRA adapter (its own seed) and a config naming it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    make_adapter(base_dir, run_dir / "adapter", "lora", seed=seed)
    (run_dir / "config.yaml").write_text(f"model: {base_dir}\nmethod: lora\n", encoding="utf-8")
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
