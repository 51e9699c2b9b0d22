"""Bottleneck adapters as a peft method: ``PeftType.BOTTLENECK``, parameter prefix ``bottleneck_``.

After this import, ``get_peft_model(model, BottleneckConfig(...))`` and
``PeftModel.from_pretrained(base, adapter_dir)`` work as for any built-in peft method.
"""

from tunesmith.methods.tuners.bottleneck.config import BottleneckConfig
from tunesmith.methods.tuners.bottleneck.layer import BottleneckLayer
from tunesmith.methods.tuners.bottleneck.model import BottleneckModel
from tunesmith.methods.tuners.registration import register_peft_type

register_peft_type(
    "bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="bottleneck_"
)

__all__ = ["BottleneckConfig", "BottleneckLayer", "BottleneckModel"]
