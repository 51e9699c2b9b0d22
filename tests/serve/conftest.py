"""Two LoRA runs on one tiny base, served together by one real server for the whole module."""

from __future__ import annotations

import pytest

from tests.serve.helpers import make_run
from tunesmith.serve.thread import running


@pytest.fixture(scope="session")
def serve_runs(tiny_llama_dir, tmp_path_factory):
    """(base_dir, run_a, run_b): two adapters of different seeds on the tiny Llama."""
    root = tmp_path_factory.mktemp("serve-runs")
    return (
        tiny_llama_dir,
        make_run(tiny_llama_dir, root / "sql", seed=1),
        make_run(tiny_llama_dir, root / "chat", seed=2),
    )


@pytest.fixture(scope="session")
def server_url(serve_runs):
    """A real server on 127.0.0.1 serving both runs (and their base) from one loaded base."""
    from tunesmith import serve

    _, run_a, run_b = serve_runs
    with running(serve(run_a, run_b, default_max_tokens=24)) as url:
        yield url


@pytest.fixture(scope="session")
def client(server_url):
    from openai import OpenAI

    return OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=60)
