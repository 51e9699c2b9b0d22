"""Verified merge and export: PEFT adapter, merged safetensors checkpoint, GGUF for llama.cpp.

Every output is reloaded by a different loader and compared with the unmerged adapted model
before it is published (a GGUF also in llama.cpp itself, when the ``[llamacpp]`` extra is
installed); a failed check raises :class:`~tunesmith.errors.WorkFailed`.
"""

from tunesmith.export.formats import FORMATS, export
from tunesmith.export.merge import MergeResult, merge
from tunesmith.export.quants import QUANTS
from tunesmith.export.result import ExportResult
from tunesmith.export.runtime_check import RuntimeCheckFailed, RuntimeReport
from tunesmith.export.source import resolve_source
from tunesmith.export.verify import TOLERANCES, Tolerance, VerificationFailed, VerifyReport

__all__ = [
    "FORMATS",
    "ExportResult",
    "export",
    "TOLERANCES",
    "MergeResult",
    "QUANTS",
    "RuntimeCheckFailed",
    "RuntimeReport",
    "Tolerance",
    "VerificationFailed",
    "VerifyReport",
    "merge",
    "resolve_source",
]

# `from tunesmith import export` gives this package; calling it calls export() (see _callable).
from tunesmith._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, export)
