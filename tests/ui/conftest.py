"""Fixtures of the web UI tests: a workspace with a tiny model and data, the real server."""

from __future__ import annotations

import shutil

import pytest

from tunesmith.serve.thread import running
from tunesmith.ui.app import create_app


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir, small_demo_data):
    """A workspace holding ``models/tiny`` and ``data/{train,eval}.jsonl`` (relative paths, as
    a user of the UI picks them)."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(tiny_llama_dir, ws / "models" / "tiny")
    (ws / "data").mkdir()
    shutil.copy(small_demo_data[0], ws / "data" / "train.jsonl")
    shutil.copy(small_demo_data[1], ws / "data" / "eval.jsonl")
    return ws


@pytest.fixture(scope="module")
def server(workspace):
    """The UI's base URL, served by uvicorn on a free loopback port."""
    with running(create_app(workspace), timeout=60) as url:
        yield url


TINY_RUN = {
    "model": "models/tiny", "data": ["data/train.jsonl"], "eval-data": "data/eval.jsonl",
    "batch-size": "4", "logging-steps": "1", "eval-limit": "2", "max-new-tokens": "4",
}  # fmt: skip
