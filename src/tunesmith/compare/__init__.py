"""Compare PEFT methods on the user's own data: same examples, steps and seed for each.

Public calls: :func:`compare` (train every method, write ``compare.json`` and ``compare.png``),
:func:`parse_methods`, :func:`lr_for` (a method's learning rate: the user's, else its default).
Importing this package does not import torch.
"""

from tunesmith.compare.lr import lr_for
from tunesmith.compare.rows import MethodRow
from tunesmith.compare.run import CompareResult, compare, parse_methods

__all__ = ["CompareResult", "MethodRow", "compare", "lr_for", "parse_methods"]

# `from tunesmith import compare` may give this package; calling it calls compare() (_callable).
from tunesmith._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, compare)
