"""Fixtures shared by the export tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["llama", "qwen2"])
def base_dir(request, tiny_llama_dir, tiny_qwen2_dir):
    """Each architecture the GGUF writer supports, as a tiny saved checkpoint."""
    return {"llama": tiny_llama_dir, "qwen2": tiny_qwen2_dir}[request.param]
