"""PEFT methods as one family (He et al., ICLR 2022, "Towards a Unified View of PEFT").

Each method module registers one :class:`~tunesmith.methods.base.MethodSpec`. The modules (and
with them torch and peft) are imported on the first :func:`get_method` / :func:`method_names` /
:func:`load_all` call, not by importing this package, so ``tunesmith --help`` stays instant.
That first call also registers tunesmith's own peft types (``BOTTLENECK`` for the Houlsby,
Pfeiffer and parallel adapters, ``MAM``), so call it before ``PeftModel.from_pretrained`` on
such an adapter.
"""

from tunesmith.methods.base import (
    MethodArgs,
    MethodSpec,
    UnifiedView,
    get_method,
    load_all,
    method_names,
)

__all__ = ["MethodArgs", "MethodSpec", "UnifiedView", "get_method", "load_all", "method_names"]
