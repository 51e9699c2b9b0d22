"""--model resolution and loading: local dirs, hub ids offline, .gguf files, the embedded default."""

import time

import pytest
import torch

from tunesmith.errors import UserInputError
from tunesmith.models import load_model_and_tokenizer, resolve_model
from tunesmith.models.loading import load_tokenizer


def test_local_dir_loads_with_its_tokenizer(tiny_llama_dir):
    model, tok, src = load_model_and_tokenizer(str(tiny_llama_dir))
    assert src.kind == "local" and model.config.model_type == "llama"
    assert tok.chat_template and tok.pad_token is not None


@pytest.mark.parametrize("bad", ["./no/such/dir", "/definitely/not/here", "a/b/c"])
def test_unknown_model_path_is_a_clear_error(bad):
    with pytest.raises(UserInputError, match="model not found"):
        resolve_model(bad)


def test_dir_without_config_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        resolve_model(str(tmp_path / "x.gguf"))


def test_hub_id_offline_and_not_cached_fails_clearly():
    src = resolve_model("nobody-here/not-a-real-model-xyz")
    assert src.kind == "hub"
    with pytest.raises(UserInputError, match="cannot load tokenizer"):
        load_tokenizer(src)


def test_pickled_weights_need_explicit_flag(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    # Write a checkpoint the old way: a pickled pytorch_model.bin and no safetensors.
    d = tmp_path / "pickled"
    d.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.name != "model.safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(str(tiny_llama_dir / "model.safetensors")), d / "pytorch_model.bin")
    with pytest.raises(UserInputError, match="allow-pickle"):
        load_model_and_tokenizer(str(d))
    model, _, _ = load_model_and_tokenizer(str(d), allow_pickle=True)
    assert model.config.model_type == "llama"


@pytest.mark.embedded
@pytest.mark.slow
def test_embedded_default_converts_once_then_loads_fast():
    from tunesmith.models.embedded import embedded_checkpoint

    path = embedded_checkpoint()  # converts on the first call on a fresh machine
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    t = time.perf_counter()
    model, tok, src = load_model_and_tokenizer("embedded")
    elapsed = time.perf_counter() - t
    assert src.kind == "embedded"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "im_start" in tok.chat_template
    assert not getattr(model, "is_quantized", False)
    # The second load reads safetensors; the ~15 s GGUF dequantization must not recur.
    assert elapsed < 10, elapsed
