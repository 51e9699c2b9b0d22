"""A method registered inside this test plans, trains, saves and compares with no other file knowing it.

``toyscale`` learns one scale per output channel of every FFN (peft's (IA)^3 layer on
``down_proj``'s output, a position the built-in ``ia3`` does not use). Everything the rest of
tunesmith needs to know about it is in its :class:`MethodSpec`: if any module matched method
names, or kept its own method list, one of these steps would refuse the name or get it wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunesmith
from tunesmith.config import make_config
from tunesmith.errors import ConfigError
from tunesmith.methods import MethodArgs, get_method, method_names
from tunesmith.methods.base import MethodSpec, UnifiedView, registered
from tunesmith.shape import model_shape

pytestmark = pytest.mark.xdist_group("tiny-e2e")

NAME = "toyscale"
TOY_LR = 7e-3


def _apply(model, args: MethodArgs):
    from peft import IA3Config, TaskType, get_peft_model

    config = IA3Config(
        task_type=TaskType.CAUSAL_LM, target_modules=["down_proj"], feedforward_modules=[]
    )
    return get_peft_model(model, config)


def _count(model_config, args: MethodArgs) -> int:
    shape = model_shape(model_config)
    return shape.layers * shape.hidden  # one scale per FFN output channel per block


def _tensors(model_config, args: MethodArgs) -> int:
    return model_shape(model_config).layers


TOY = MethodSpec(
    name=NAME,
    summary="One learned scale per FFN output channel (a test-only method).",
    paper="test fixture",
    view=UnifiedView(form="l ⊙ FFN(x)", position="ffn", insertion="serial", composition="rescale"),
    param_formula="L·d",
    apply=_apply,
    count_trainable=_count,
    count_tensors=_tensors,
    mergeable=True,
    default_lr=TOY_LR,
)


@pytest.fixture
def toy():
    with registered(TOY) as spec:
        yield spec
    assert NAME not in method_names()


def test_no_source_file_names_the_toy_method():
    src = Path(tunesmith.__file__).parent
    assert not [p for p in src.rglob("*.py") if NAME in p.read_text(encoding="utf-8")]


def test_unregistered_toy_is_refused_with_the_registered_names():
    with pytest.raises(ConfigError) as err:
        make_config({"method": NAME})
    assert err.value.key == "method" and "lora" in err.value.allowed


def test_toy_method_plans_trains_saves_and_compares(toy, tiny_llama_dir, small_demo_data, tmp_path):
    from tunesmith.compare import compare
    from tunesmith.compare.latency import LatencySettings
    from tunesmith.plan import plan

    train_file, eval_file = small_demo_data
    expected = 2 * 64  # the tiny Llama: 2 blocks of width 64
    assert get_method(NAME) is toy and make_config({"method": NAME}).method == NAME

    p = plan(str(tiny_llama_dir), method=NAME, device="cpu", batch_size=4, seq_len=128)
    assert p.trainable_params == expected and p.verdict == "fits"
    assert p.recommendation["method"] == NAME and p.recommendation["quantization"] is None

    common = dict(
        model=str(tiny_llama_dir), data=[str(train_file)], eval_data=str(eval_file),
        max_steps=2, batch_size=4, eval_limit=2, max_new_tokens=4, skip_base_eval=True,
    )  # fmt: skip
    result = tunesmith.train(
        method=NAME, output=str(tmp_path / "run"), say=lambda m: None, **common
    )
    assert result.steps == 2 and result.trainable_params == expected
    adapter = result.run_dir / "adapter"
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "IA3" and peft_config["target_modules"] == ["down_proj"]
    assert json.loads((adapter / "tunesmith_base.json").read_text())["method"] == NAME
    from safetensors.torch import load_file

    saved = load_file(adapter / "adapter_model.safetensors")
    assert len(saved) == 2 and sum(t.numel() for t in saved.values()) == expected

    compared = compare(
        NAME,
        base_config=common,
        output=tmp_path / "cmp",
        latency_settings=LatencySettings(prompt_tokens=16, runs=2, warmup=1),
        say=lambda m: None,
    )
    (row,) = compared.rows
    assert (row.method, row.error, row.trainable_params) == (NAME, None, expected)
    assert row.lr == TOY_LR  # the spec's own default learning rate
    assert row.latency_ms is not None and row.latency_ms > 0
