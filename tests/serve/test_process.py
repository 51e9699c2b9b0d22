"""``tunesmith serve`` as its own process: the bounded queue answers 429, SIGTERM is graceful.

One server process with one row and one queue place: a long stream holds the row, a second
request waits, a third is refused with 429. Then SIGTERM during a stream: the stream still
completes, and the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serve.helpers import free_port

LONG = 400  # tokens: long enough (seconds) to act while the stream runs


def _body(model: str, **fields) -> bytes:
    messages = [{"role": "user", "content": "How many patients?"}]
    return json.dumps({"model": model, "messages": messages, "temperature": 0, **fields}).encode()


def _wait(pred, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def process(serve_runs, tmp_path_factory):
    """A `python -m tunesmith serve` subprocess (1 row, 1 queue place); yields (proc, url)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve-log") / "server.log", "w+")  # noqa: SIM115
    argv = [sys.executable, "-m", "tunesmith", "serve", str(serve_runs[1]), "--port", str(port)]
    argv += ["--max-batch", "1", "--max-queue", "1", "--threads", "1"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read()}")
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(up, "the server to start", timeout=120)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    log.close()


def _health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def test_a_full_queue_answers_429(process, serve_runs):
    _, url = process
    model = serve_runs[1].name
    with httpx.Client(base_url=url, timeout=120) as http:
        with http.stream(
            "POST", "/v1/chat/completions", content=_body(model, max_tokens=LONG, stream=True)
        ) as first:
            assert first.status_code == 200
            _wait(lambda: _health(url)["running"] == 1, "the first request to run")
            waiting: list[httpx.Response] = []
            second = threading.Thread(
                target=lambda: waiting.append(
                    httpx.post(
                        url + "/v1/chat/completions",
                        content=_body(model, max_tokens=4),
                        timeout=120,
                    )
                )
            )
            second.start()
            _wait(lambda: _health(url)["waiting"] == 1, "the second request to queue")
            third = http.post("/v1/chat/completions", content=_body(model, max_tokens=4))
            assert third.status_code == 429, third.text
            assert third.json()["error"]["type"] == "rate_limit_error"
            lines = [line for line in first.iter_lines() if line]
        second.join(120)
    assert lines[-1] == "data: [DONE]"
    assert waiting and waiting[0].status_code == 200
    assert (
        httpx.post(
            url + "/v1/chat/completions", content=_body(model, max_tokens=4), timeout=60
        ).status_code
        == 200
    )


def test_sigterm_lets_the_stream_in_flight_finish_then_exits_0(process, serve_runs):
    proc, url = process
    model = serve_runs[1].name
    with (
        httpx.Client(base_url=url, timeout=120) as http,
        http.stream(
            "POST", "/v1/chat/completions", content=_body(model, max_tokens=LONG, stream=True)
        ) as r,
    ):
        assert r.status_code == 200
        lines = (line for line in r.iter_lines() if line)
        got = [next(lines), next(lines)]  # the role chunk and the first text
        proc.send_signal(signal.SIGTERM)
        got += list(lines)
    assert got[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in got[:-1]]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text  # the whole answer arrived
    assert proc.wait(60) == 0
