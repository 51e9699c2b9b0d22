"""Filling a DeepSpeed JSON from tunesmith's settings (no processes, no DeepSpeed engine)."""

import json

import pytest

from tests.distributed.helpers import EXAMPLES
from tunesmith.distributed.deepspeed_config import fill_config
from tunesmith.errors import UserInputError

SETTINGS = dict(micro_batch=4, grad_accum=2, world_size=8, max_grad_norm=1.0, precision="bf16")


def _write(tmp_path, config: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("name", ["deepspeed_zero2.json", "deepspeed_zero3.json"])
def test_the_shipped_configs_fill_every_auto_from_the_run(name):
    filled = fill_config(str(EXAMPLES / name), **SETTINGS)
    assert "auto" not in json.dumps(filled)
    assert filled["train_micro_batch_size_per_gpu"] == 4
    assert filled["gradient_accumulation_steps"] == 2
    assert filled["train_batch_size"] == 4 * 2 * 8
    assert filled["gradient_clipping"] == 1.0
    assert filled["bf16"] == {"enabled": True} and filled["fp16"] == {"enabled": False}
    assert filled["zero_allow_untested_optimizer"] is True


def test_autos_tunesmith_has_no_value_for_are_left_to_deepspeed(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}})
    assert fill_config(path, **SETTINGS)["zero_optimization"] == {"stage": 3}


def test_a_matching_explicit_value_is_kept(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 1}, "train_batch_size": 64})
    assert fill_config(path, **SETTINGS)["train_batch_size"] == 64


@pytest.mark.parametrize(
    "config,message",
    [
        ({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 2},
         "train_micro_batch_size_per_gpu is 2 but --batch-size means 4"),
        ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}},
         "bf16.enabled is False but --precision bf16 means True"),
        ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}},
         'remove "optimizer"'),
        ({"zero_optimization": {"stage": 0}}, "use --distributed ddp"),
        ({"train_batch_size": "auto"}, "zero_optimization.stage is 0"),
    ],
)  # fmt: skip
def test_a_config_that_contradicts_the_run_names_file_and_key(tmp_path, config, message):
    path = _write(tmp_path, config)
    with pytest.raises(UserInputError, match="--distributed-config") as err:
        fill_config(path, **SETTINGS)
    assert path in str(err.value) and message in str(err.value)


def test_a_file_that_is_not_json_is_a_user_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text("{stage: 3")
    with pytest.raises(UserInputError, match="not a DeepSpeed JSON"):
        fill_config(str(path), **SETTINGS)
