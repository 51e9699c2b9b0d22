"""Run an app with uvicorn in a background thread: for tests, benchmarks and notebooks."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 60) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``port=0``: a free port).

    The server stops gracefully on exit (requests in flight finish, engines stop).
    """
    import uvicorn

    # log_config=None: uvicorn's own logging set-up (dictConfig) would reconfigure the host
    # process's logging, whose handlers may hold streams that are closed by now (a notebook's,
    # a test runner's).
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tunesmith-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
