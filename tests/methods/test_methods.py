"""The cross-method table: the same checks for every PEFT method on a tiny Llama and Qwen2.

Each case applies the method to a real 2-layer model built from a config (QLoRA: loaded in 4-bit
from a saved tiny checkpoint) and checks, against the base model, peft and plain torch:
trainable-parameter count == the method's formula; only the method's parameters get gradients
and change in an optimizer step; zero-initialized methods start at the base output; save -> load
reproduces the logits exactly; merging matches the unmerged model within 1e-5 (float32).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny import make_tiny_model
from tunesmith.errors import ConfigError
from tunesmith.methods import MethodArgs, get_method, method_names
from tunesmith.methods.base import register

ARCHS = ("llama", "qwen2")
METHODS = (
    "lora", "qlora", "dora", "rslora", "houlsby", "pfeiffer", "parallel", "prefix", "prompt",
    "ia3", "mam", "freeze", "full",
)  # fmt: skip
# Methods whose added function is zero (or identity) at initialization.
ZERO_INIT = (
    "lora",
    "qlora",
    "dora",
    "rslora",
    "houlsby",
    "pfeiffer",
    "parallel",
    "ia3",
    "freeze",
    "full",
)
MERGEABLE = ("lora", "dora", "rslora", "ia3")  # qlora: see test_qlora_merge_into_dequantized_base

ARGS = MethodArgs(
    rank=4, alpha=8.0, dropout=0.0, target=("q_proj", "v_proj"), num_virtual_tokens=4,
    bottleneck=8, scale=4.0, freeze_top_k=1,
)  # fmt: skip

# What "the method's parameters" are, by name, for each method.
OWNED = {
    "lora": ("lora_",),
    "qlora": ("lora_",),
    "dora": ("lora_",),
    "rslora": ("lora_",),
    "ia3": ("ia3_",),
    "houlsby": ("bottleneck_",),
    "pfeiffer": ("bottleneck_",),
    "parallel": ("bottleneck_",),
    "mam": ("bottleneck_", "mam_prefix"),
    "prefix": ("prompt_encoder",),
    "prompt": ("prompt_encoder",),
    "freeze": ("layers.1.", "model.norm."),
    "full": ("",),
}

IDS = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 150], [9, 33, 120, 3, 88, 41, 77, 190]])


def base_model(method: str, arch: str, dirs: dict):
    """A fresh base model: from config, or 4-bit from the saved checkpoint for QLoRA."""
    if get_method(method).quantized_base:
        from tunesmith.methods.qlora import quantization_config

        return AutoModelForCausalLM.from_pretrained(
            dirs[arch], quantization_config=quantization_config(), dtype=torch.float32
        )
    return make_tiny_model(arch)


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def applied(method: str, arch: str, dirs: dict):
    torch.manual_seed(0)
    return get_method(method).apply(base_model(method, arch, dirs), ARGS)


def train_step(model) -> None:
    """One SGD step on the LM loss over the trainable parameters."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    model(input_ids=IDS, labels=IDS).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)  # keep grads allocated: test_step checks which exist


@pytest.fixture(scope="module")
def dirs(tiny_llama_dir, tiny_qwen2_dir):
    return {"llama": tiny_llama_dir, "qwen2": tiny_qwen2_dir}


def test_every_method_is_registered():
    assert tuple(method_names()) == METHODS


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_trainable_count_equals_formula(method, arch, dirs):
    model = applied(method, arch, dirs)
    params = [p for p in model.parameters() if p.requires_grad]
    spec = get_method(method)
    assert sum(p.numel() for p in params) == spec.count_trainable(model.config, ARGS) > 0
    assert len(params) == spec.count_tensors(model.config, ARGS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_step_touches_only_the_method_parameters(method, arch, dirs):
    model = applied(method, arch, dirs)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters() if any(k in n for k in OWNED[method])}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == names
    assert changed and changed <= names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ZERO_INIT)
def test_zero_initialized_methods_start_at_the_base(method, arch, dirs):
    expected = logits(base_model(method, arch, dirs))
    got = logits(applied(method, arch, dirs))
    # DoRA renormalizes W0 by its own column norm: equal up to float rounding.
    torch.testing.assert_close(got, expected, atol=1e-6 if method == "dora" else 0.0, rtol=0.0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_save_load_reproduces_logits(method, arch, dirs, tmp_path):
    from peft import PeftModel

    model = applied(method, arch, dirs)
    train_step(model)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    if get_method(method).peft_format:
        assert (tmp_path / "adapter_config.json").is_file()
        assert (tmp_path / "adapter_model.safetensors").is_file()
        loaded = PeftModel.from_pretrained(base_model(method, arch, dirs), tmp_path)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(logits(loaded), expected)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_matches_unmerged(method, arch, dirs):
    model = applied(method, arch, dirs)
    train_step(model)
    expected = logits(model)
    merged = model.merge_and_unload()
    assert not any(k in n for n, _ in merged.named_parameters() for k in OWNED[method])
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=0.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_qlora_merge_into_dequantized_base(arch, dirs, tmp_path):
    from peft import PeftModel

    from tunesmith.methods.qlora import dequantize

    model = applied("qlora", arch, dirs)
    train_step(model)
    model.save_pretrained(tmp_path)
    base = dequantize(base_model("qlora", arch, dirs))
    assert not any("Linear4bit" in type(m).__name__ for m in base.modules())
    unmerged = PeftModel.from_pretrained(base, tmp_path)
    expected = logits(unmerged)
    torch.testing.assert_close(logits(unmerged.merge_and_unload()), expected, atol=1e-5, rtol=0.0)


@pytest.mark.parametrize(
    "method", sorted(set(METHODS) - set(MERGEABLE) - {"qlora", "freeze", "full"})
)
def test_non_mergeable_methods_refuse_to_merge(method, dirs):
    assert not get_method(method).mergeable
    model = applied(method, "llama", dirs)
    with pytest.raises((ValueError, AttributeError, NotImplementedError)):
        model.merge_and_unload()


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register(get_method("lora"))


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="'method'.*lora"):
        get_method("loha")


def test_qlora_refuses_an_unquantized_base():
    with pytest.raises(ConfigError, match="4-bit"):
        get_method("qlora").apply(make_tiny_model("llama"), ARGS)


def test_freeze_rejects_more_blocks_than_the_model_has():
    from dataclasses import replace

    with pytest.raises(ConfigError, match="freeze_top_k"):
        get_method("freeze").apply(make_tiny_model("llama"), replace(ARGS, freeze_top_k=3))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_lower_the_loss(method, arch, dirs):
    model = applied(method, arch, dirs).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    # Adam on one fixed batch: every step must go down (small methods move slowly, but move).
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
