"""Several adapters on one loaded base: each selected adapter equals that adapter loaded alone."""

from __future__ import annotations

import pytest
import torch

from tests.export.adapters import IDS, make_adapter
from tunesmith.errors import UserInputError
from tunesmith.models.adapted import load_adapted
from tunesmith.models.shared import load_shared, share_key


def _logits(model, ids=IDS):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.fixture
def two_loras(tiny_llama_dir, tmp_path):
    """Two runs' adapter directories (each run with its config.yaml), different weights."""
    adapters = []
    for seed, run in enumerate((tmp_path / "run-a", tmp_path / "run-b"), start=1):
        adapters.append(make_adapter(tiny_llama_dir, run / "adapter", "lora", seed=seed))
        (run / "config.yaml").write_text(f"model: {tiny_llama_dir}\nmethod: lora\n")
    return tuple(adapters)


def test_each_adapter_selected_equals_it_loaded_alone(two_loras):
    a, b = two_loras
    shared = load_shared({"a": a, "b": b}, dtype=torch.float32)
    assert shared.names == ["a", "b"] and set(shared.tokenizers) == {"a", "b"}
    alone = {
        name: _logits(load_adapted(d, dtype=torch.float32).model)
        for name, d in zip("ab", two_loras, strict=True)
    }
    assert (alone["a"] - alone["b"]).abs().max() > 1e-2  # two really different adapters
    for name in ("b", "a", "b"):  # switching back and forth
        torch.testing.assert_close(_logits(shared.select(name)), alone[name], rtol=0, atol=1e-6)
    with shared.base_only() as base:
        plain = _logits(base)
    assert not any(p.requires_grad for p in shared.model.parameters())
    assert (plain - alone["a"]).abs().max() > 1e-2
    assert shared.model.active_adapter == "b"  # the base-only block leaves the selection as it was
    # One copy of the base: its weights are the same tensors under both adapters.
    base_weight = shared.model.get_base_model().model.embed_tokens.weight
    assert (
        base_weight.data_ptr()
        == shared.select("a").get_base_model().model.embed_tokens.weight.data_ptr()
    )


def test_default_names_come_from_the_run_directories(two_loras):
    shared = load_shared(list(two_loras), dtype=torch.float32)
    assert shared.names == ["run-a", "run-b"]
    with pytest.raises(UserInputError, match="no adapter 'run-c'"):
        shared.select("run-c")


def test_adapters_that_cannot_share_a_base_are_refused(tiny_llama_dir, two_loras, tmp_path):
    prefix = make_adapter(tiny_llama_dir, tmp_path / "prefix", "prefix")
    assert share_key(two_loras[0]) != share_key(prefix)
    with pytest.raises(UserInputError, match="cannot share one base"):
        load_shared({"a": two_loras[0], "p": prefix})


@pytest.mark.parametrize("names", [("x", "x.y"), ("", "y")])
def test_bad_names_are_refused(two_loras, names):
    with pytest.raises(UserInputError, match="adapter name"):
        load_shared(dict(zip(names, two_loras, strict=True)))


def test_duplicate_default_names_are_refused(tiny_llama_dir, tmp_path):
    one = make_adapter(tiny_llama_dir, tmp_path / "x" / "same", "lora")
    two = make_adapter(tiny_llama_dir, tmp_path / "y" / "same", "lora")
    with pytest.raises(UserInputError, match="both named 'same'"):
        load_shared([one, two])
