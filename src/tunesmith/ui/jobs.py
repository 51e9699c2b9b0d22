"""Training subprocesses: Launch, Stop and Resume, one process per click and per run.

Launch writes the validated config under the UI's folder and starts ``tunesmith train
CONFIG.yaml`` (the CLI, not an in-process call: a run outlives a UI restart, and a crash in
training never takes the server down). Stop sends SIGTERM, on which the trainer saves a
checkpoint at the next step boundary; Resume starts ``tunesmith train --resume RUN_DIR``.
Each request carries an idempotency key: the same key twice (a double click, a retried
request) gets the first launch's answer, never a second process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from tunesmith.config import TrainConfig, to_yaml
from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir, RunLock
from tunesmith.ui.workspace import RUNS, Workspace


class Busy(UserInputError):
    """Too many training processes started by this UI are running (HTTP 429)."""


class Jobs:
    """The training processes this UI started, keyed by run name (relative path)."""

    def __init__(self, workspace: Workspace, max_running: int = 2):
        self.ws = workspace
        self.max_running = max_running
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._keys: OrderedDict[str, str] = OrderedDict()  # idempotency key -> run name

    # -- queries ----------------------------------------------------------------------------
    def alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def running(self) -> list[str]:
        return [n for n in self._procs if self.alive(n)]

    def log_path(self, name: str) -> Path:
        return self.ws.private("logs") / (name.replace("/", "__") + ".log")

    def log_tail(self, name: str, limit: int = 4000) -> str:
        try:
            return self.log_path(name).read_text(encoding="utf-8", errors="replace")[-limit:]
        except OSError:
            return ""

    # -- actions ----------------------------------------------------------------------------
    def launch(self, cfg: TrainConfig, key: str) -> str:
        """Start ``tunesmith train`` on ``cfg``; returns the run name (its path in the workspace)."""
        with self._lock:
            if key in self._keys:
                return self._keys[key]
            self._check_capacity()
            name = cfg.output or self._fresh_name(cfg.method)
            out = self.ws.resolve(name)
            if out.exists() and any(out.iterdir()) and not cfg.overwrite:
                raise UserInputError(
                    f"run directory {name} already exists; choose another output or tick overwrite"
                )
            config = self.ws.private("configs") / (name.replace("/", "__") + ".yaml")
            config.write_text(to_yaml(cfg.model_copy(update={"output": name})), encoding="utf-8")
            self._start(name, ["train", str(config)])
            return self._remember(key, name)

    def resume(self, name: str, key: str) -> str:
        """Continue an interrupted or failed run from its last checkpoint."""
        with self._lock:
            if key in self._keys:
                return self._keys[key]
            run = self.ws.run(name)
            if self.alive(name) or run.state() == "running":
                raise UserInputError(f"{name} is running")
            if run.state() == "finished":
                raise UserInputError(f"{name} has finished; nothing to resume")
            self._check_capacity()
            self._start(name, ["train", "--resume", name])
            return self._remember(key, name)

    def stop(self, name: str) -> int:
        """SIGTERM the process training ``name`` (it checkpoints and exits); returns its pid."""
        run = self.ws.run(name)
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            return proc.pid
        pid = RunLock.holder(run.path)
        # A run this server did not start (or started before a restart): the lock's holder,
        # signalled only if it is a tunesmith process.
        if pid and _is_tunesmith(pid):
            os.kill(pid, signal.SIGTERM)
            return pid
        raise UserInputError(f"{name} is not running")

    # -- internals --------------------------------------------------------------------------
    def _check_capacity(self) -> None:
        if len(self.running()) >= self.max_running:
            raise Busy(
                f"{self.max_running} runs are training already; stop one or wait for it to finish"
            )

    def _fresh_name(self, method: str) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, i = f"{RUNS}/{method}-{stamp}", 1
        while (self.ws.root / name).exists():
            i += 1
            name = f"{RUNS}/{method}-{stamp}-{i}"
        return name

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - the child owns it from here
        try:
            self._procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tunesmith", *args],
                cwd=self.ws.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def _remember(self, key: str, name: str) -> str:
        self._keys[key] = name
        while len(self._keys) > 1000:
            self._keys.popitem(last=False)
        return name


def _is_tunesmith(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"tunesmith" in part for part in cmd)


def wait_state(run: RunDir, states: tuple[str, ...], timeout: float) -> str:
    """Poll ``run``'s state until it is one of ``states`` (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    while (state := run.state()) not in states and time.monotonic() < deadline:
        time.sleep(0.1)
    return state
