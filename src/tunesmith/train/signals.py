"""Stopping a run at a step boundary: SIGINT/SIGTERM only raise a flag the loop reads; a
caller's stop predicate (``TrainLoop(stop_when=...)``) ends a run it judges hopeless."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from tunesmith.errors import TunesmithError, WorkFailed


class Interrupted(TunesmithError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the step boundary."""

    exit_code = 130


class Diverged(WorkFailed):
    """The caller's stop predicate ended the run early (e.g. a learning rate whose loss blew up)."""


class StopRequest:
    """Whether a stop was asked for; :meth:`catching` routes the signals to it."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        """Within the block, SIGINT/SIGTERM set :attr:`requested`; a second SIGINT quits."""

        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                # A second Ctrl-C: quit now. Checkpoints are atomic, so the last one stays valid.
                raise KeyboardInterrupt
            # Only a flag: printing from a handler can re-enter a half-done write to stdout.
            self.requested = True

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
