"""Naming the method of an adapter from its peft config alone."""

import pytest

from tunesmith.methods import method_names
from tunesmith.methods.infer import method_from_adapter_config


@pytest.mark.parametrize(
    "config, method",
    [
        ({"peft_type": "LORA"}, "lora"),
        ({"peft_type": "LORA", "use_dora": True}, "dora"),
        ({"peft_type": "LORA", "use_rslora": True}, "rslora"),
        ({"peft_type": "IA3"}, "ia3"),
        ({"peft_type": "PREFIX_TUNING"}, "prefix"),
        ({"peft_type": "PROMPT_TUNING"}, "prompt"),
        ({"peft_type": "MAM"}, "mam"),
        ({"peft_type": "BOTTLENECK", "variant": "pfeiffer"}, "pfeiffer"),
        ({"peft_type": "LOHA"}, "loha"),  # unknown to tunesmith: peft's own name
    ],
)
def test_method_from_adapter_config(config, method):
    assert method_from_adapter_config(config) == method
    assert method in method_names() or method == "loha"
