"""Tiny runs to serve, and a free loopback port for server subprocesses."""

from __future__ import annotations

import socket
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
