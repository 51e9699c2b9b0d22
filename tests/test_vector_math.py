"""torch's vector math is set up on one thread before any model loads (``vector_math.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunesmith import vector_math
from tunesmith.errors import UserInputError
from tunesmith.models.loading import load_model_and_tokenizer


def test_loading_a_model_sets_up_vector_math_first(tiny_llama_dir, monkeypatch):
    calls = []

    def spy():
        calls.append("init")

    def loaded(*args, **kwargs):
        calls.append("load")
        raise OSError("stop here")

    monkeypatch.setattr(vector_math, "initialize", spy)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", loaded)
    with pytest.raises(UserInputError, match="stop here"):  # the stub stops the load
        load_model_and_tokenizer(str(tiny_llama_dir))
    assert calls == ["init", "load"]


def test_initialize_runs_in_a_fresh_process_and_twice():
    code = (
        "from tunesmith import vector_math; vector_math.initialize(); vector_math.initialize();"
        "import torch; print(torch.ones(3).cos().sum().item() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
