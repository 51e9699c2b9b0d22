"""Let a subpackage double as the function it is named after.

``from tunesmith import plan`` must give the ``plan`` function, but ``tunesmith.plan`` is also
a subpackage, and Python's import system binds the *module* to that attribute whenever the
subpackage is imported. Making the module object itself callable keeps both meanings stable
regardless of import order: ``plan(...)`` calls the function, ``tunesmith.plan.Plan`` still
reaches the module's names.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_module_callable(module_name: str, func: Callable[..., Any]) -> None:
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        __doc__ = module.__doc__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

    module.__class__ = _CallableModule
