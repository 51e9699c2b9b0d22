"""MAM as a peft method: ``PeftType.MAM``, parameter prefix ``mam_``."""

from tunesmith.methods.tuners.mam.config import MamConfig
from tunesmith.methods.tuners.mam.model import MamModel
from tunesmith.methods.tuners.registration import register_peft_type

register_peft_type("mam", config_cls=MamConfig, model_cls=MamModel, prefix="mam_")

__all__ = ["MamConfig", "MamModel"]
