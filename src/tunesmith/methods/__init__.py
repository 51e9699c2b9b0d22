"""PEFT methods as one family (He et al., ICLR 2022, "Towards a Unified View of PEFT").

Each method module registers one :class:`~tunesmith.methods.base.MethodSpec`; importing this
package imports them all so the registry is complete.
"""

from tunesmith.methods.base import MethodArgs, MethodSpec, UnifiedView, get_method, method_names

__all__ = ["MethodArgs", "MethodSpec", "UnifiedView", "get_method", "method_names"]
