"""tunesmith's own peft types (bottleneck adapters, MAM) against plain-torch and peft references."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from torch import nn

from tests.tiny import make_tiny_model
from tunesmith.methods import load_all
from tunesmith.methods.tuners.bottleneck import BottleneckConfig, BottleneckLayer
from tunesmith.methods.tuners.mam import MamConfig
from tunesmith.methods.tuners.registration import register_peft_type

load_all()
IDS = torch.tensor([[5, 17, 42, 99, 7, 123], [9, 33, 120, 3, 88, 41]])


def _randomize(layer: BottleneckLayer) -> None:
    torch.manual_seed(1)
    for p in layer.parameters():
        if p.requires_grad:
            nn.init.normal_(p, std=0.3)


@pytest.mark.parametrize("insertion,scale", [("serial", 1.0), ("parallel", 4.0)])
def test_bottleneck_layer_equals_the_paper_formula(insertion, scale):
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 16))  # an FFN, d = 16
    layer = BottleneckLayer(
        g, "default", d_in=16, d_out=16, bottleneck_size=4, insertion=insertion, scale=scale
    )
    _randomize(layer)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    layer.double()
    down, up = layer.bottleneck_down["default"], layer.bottleneck_up["default"]
    # Reference in float64: serial h + f(h) with h = g(x) (Houlsby Fig. 2); parallel g(x) + s·f(x).
    h = g(x)
    src = h if insertion == "serial" else x
    f = torch.relu(src @ down.weight.T + down.bias) @ up.weight.T + up.bias
    torch.testing.assert_close(layer(x), h + scale * f, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["pfeiffer", "mam"])
def test_adapters_can_be_disabled(method):
    from tunesmith.methods import MethodArgs, get_method

    base = make_tiny_model("llama")
    with torch.no_grad():
        expected = base(input_ids=IDS).logits
    model = get_method(method).apply(base, MethodArgs(bottleneck=4, num_virtual_tokens=2))
    for module in model.modules():
        if isinstance(module, BottleneckLayer):
            _randomize(module)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=IDS).logits, expected)
        with model.disable_adapter():
            assert torch.equal(model(input_ids=IDS).logits, expected)
        assert not torch.equal(model(input_ids=IDS).logits, expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_mam_prefix_equals_peft_prefix_tuning(arch):
    """With its FFN adapter at zero, MAM must compute exactly peft's prefix tuning (Li & Liang)."""
    n = 3
    ref = get_peft_model(
        make_tiny_model(arch),
        PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n),
    )
    mam = get_peft_model(
        make_tiny_model(arch),
        MamConfig(task_type=TaskType.CAUSAL_LM, bottleneck_size=4, num_virtual_tokens=n),
    )
    cfg = mam.config
    layers, kv, hd = (
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        cfg.hidden_size // cfg.num_attention_heads,
    )
    # peft stores the prefix as (l, L·2·kv·hd) and views it as (l, L, 2, kv, hd); ours is
    # (L, 2, kv, l, hd).
    emb = ref.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.normal_(std=1.0)
        mam.base_model.mam_prefix["default"].copy_(
            emb.view(n, layers, 2, kv, hd).permute(1, 2, 3, 0, 4)
        )
        mask = torch.ones_like(IDS)
        expected = ref(input_ids=IDS, attention_mask=mask).logits
        got = mam(input_ids=IDS, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_mam_starts_as_the_base_model_reading_its_prefix_tokens(arch):
    """Token init (Li & Liang §7.2): at init MAM == the base model with l real tokens in front."""
    base = make_tiny_model(arch)
    with torch.no_grad():
        torch.manual_seed(0)
        model = get_peft_model(
            base, MamConfig(task_type=TaskType.CAUSAL_LM, bottleneck_size=4, num_virtual_tokens=3)
        )
        prefix_ids = torch.tensor([model.peft_config["default"].prefix_token_ids] * len(IDS))
        assert prefix_ids.shape == (2, 3)
        got = model(input_ids=IDS).logits
        with model.disable_adapter():
            expected = model(input_ids=torch.cat([prefix_ids, IDS], dim=1)).logits[:, 3:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_mam_generate_matches_a_greedy_loop_without_cache():
    torch.manual_seed(0)
    model = get_peft_model(
        make_tiny_model("llama"),
        MamConfig(
            task_type=TaskType.CAUSAL_LM,
            bottleneck_size=4,
            num_virtual_tokens=3,
            prefix_init="normal",
            prefix_init_std=1.0,
        ),
    ).eval()
    prompt = IDS[:1]
    out = model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False
    )
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)
    # Left padding must not change the continuation: the prefix stays visible, pads do not.
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(prompt)], dim=1)
    out_padded = model.generate(
        input_ids=padded, attention_mask=mask, max_new_tokens=6, do_sample=False
    )
    assert torch.equal(out_padded[:, 2:], out)


def test_registration_is_idempotent_and_uses_peft_tables():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType

    from tunesmith.methods.tuners.bottleneck import BottleneckModel

    member = register_peft_type(
        "bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="bottleneck_"
    )
    assert member is PeftType("BOTTLENECK") is PeftType.BOTTLENECK
    assert PEFT_TYPE_TO_CONFIG_MAPPING["BOTTLENECK"] is BottleneckConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["MAM"].__name__ == "MamModel"
    assert PeftType.LORA in list(PeftType)  # built-in members untouched


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and peft (~15 s on 1 core)
def test_adapters_load_with_stock_peft_in_a_fresh_process(tmp_path):
    """Only `load_all()` is needed before stock `PeftModel.from_pretrained` reads our types."""
    expected = {}
    for method in ("houlsby", "mam"):
        from tunesmith.methods import MethodArgs, get_method

        torch.manual_seed(0)
        model = get_method(method).apply(
            make_tiny_model("llama"), MethodArgs(bottleneck=4, num_virtual_tokens=2)
        )
        for module in model.modules():
            if isinstance(module, BottleneckLayer):
                _randomize(module)
        model.save_pretrained(tmp_path / method)
        with torch.no_grad():
            expected[method] = model(input_ids=IDS).logits
        torch.save(expected[method], tmp_path / f"{method}.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from peft import PeftModel
        from tests.tiny import make_tiny_model
        from tunesmith.methods import load_all
        load_all()
        ids = torch.tensor({IDS.tolist()})
        for method in ("houlsby", "mam"):
            model = PeftModel.from_pretrained(make_tiny_model("llama"), r"{tmp_path}/" + method)
            with torch.no_grad():
                got = model(input_ids=ids).logits
            assert torch.equal(got, torch.load(r"{tmp_path}/" + method + ".pt")), method
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


@pytest.mark.parametrize("method", ["houlsby", "parallel", "mam"])
def test_adapters_stay_fp32_on_a_bf16_base(method):
    from tunesmith.methods import MethodArgs, get_method

    base = make_tiny_model("llama").to(torch.bfloat16)
    model = get_method(method).apply(base, MethodArgs(bottleneck=4, num_virtual_tokens=2))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_mam_refuses_gradient_checkpointing():
    from tunesmith.methods import MethodArgs, get_method

    assert not get_method("mam").gradient_checkpointing
    assert not get_method("prefix").gradient_checkpointing
    base = make_tiny_model("llama")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_method("mam").apply(base, MethodArgs(bottleneck=4, num_virtual_tokens=2)).train()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model(input_ids=IDS, labels=IDS)


@pytest.mark.parametrize("method", ["houlsby", "parallel", "mam"])
def test_unload_gives_back_the_base_model(method):
    from tunesmith.methods import MethodArgs, get_method

    base = make_tiny_model("llama")
    with torch.no_grad():
        expected = base(input_ids=IDS).logits
    model = get_method(method).apply(base, MethodArgs(bottleneck=4, num_virtual_tokens=2))
    for module in model.modules():
        if isinstance(module, BottleneckLayer):
            _randomize(module)
    plain = model.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS).logits, expected)


def test_a_different_class_under_a_taken_peft_name_is_refused():
    from tunesmith.methods.tuners.mam import MamModel

    with pytest.raises(KeyError, match="already"):
        register_peft_type(
            "bottleneck", config_cls=BottleneckConfig, model_cls=MamModel, prefix="x_"
        )
