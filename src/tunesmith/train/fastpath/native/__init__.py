"""tunesmith's CPU kernels (``kernels.cpp``): RMSNorm, SwiGLU, RoPE, dropout, causal softmax,
DoRA's column scale, a LoRA branch's rank-r products and the gradient clip's two passes
(:mod:`~tunesmith.train.grad_clip`); and, where the CPU has AMX tiles, frozen products on them
(``amx_gemm.cpp``; :mod:`~tunesmith.train.fastpath.row_split` takes them where they measure
faster), packed attention's whole causal attention (``causal_attention.cpp``; see
:mod:`~tunesmith.train.fastpath.fused_attention`) and the loss's frozen vocabulary head with its
cross-entropy and gradient (``amx_head.cpp``; see :mod:`~tunesmith.train.fastpath.tile_head`),
and a LoRA node's backward products from rank 8 on (``amx_lora.cpp``; see
:mod:`~tunesmith.train.fastpath.lora_linear`); where the CPU has AVX512-BF16 and no AMX
(:func:`bf16_dots`), that attention and the LoRA kernels' passes in its bf16 dot products
(``causal_attention.cpp``, ``dp_lora.cpp``; :func:`~tunesmith.train.fastpath.lora_linear._bf16_dots`),
the LoRA passes in fp32 FMAs elsewhere. Where a large call has several of these paths (an AMX
CPU has all three), the one it takes is measured per machine
(:mod:`~tunesmith.train.fastpath.kernel_choice`).

Each runs in one pass each way (and packed attention's row placement in one gather).

Eager torch runs each of these as a chain of 4-12 memory-bound ops per direction (casts, products,
reductions; each a pass over the activations and an allocation), and on an AMX CPU, where the
matmuls are fast, those chains are a large part of a training step. torch.compile fuses them
too, but costs 13 s (cold) or 3 s (warm) of compilation per run and per model shape
(benchmarks/RESULTS.md, "torch.compile on the AMX CPU"); these kernels are compiled once per
machine and torch version (~35 s, ``python -m tunesmith.train.fastpath.native``; ``make``
does it at install) and load in milliseconds afterwards. Measured on the AMX Xeon: a bench step
(SmolLM2-135M, LoRA q/v with dropout) 0.86-0.87x, a demo step 0.92-0.93x the time of the eager
ops (benchmarks/RESULTS.md, "tunesmith's CPU kernels"); the dropout words computed in the kernel
and the causal softmax took 3% and 1-2.5% more off (same file, "Dropout masks from a
counter-based hash, and a causal softmax"), the LoRA products 7-8% of a demo step (oneDNN ran
them as ~900 small products; "The LoRA branch's rank-r products in one pass").

They are built with torch's own extension builder into torch's extension folder
(``TORCH_EXTENSIONS_DIR``), under a name that changes with the source, torch's version and the
CPU's vector ISA, with that ISA's ATen vector types (AVX-512, AVX2, or portable C++). A training
run never compiles: where the kernels are not built (or cannot be: no C++ compiler, not Linux)
:func:`kernels` returns None, the fast paths keep the eager ops and say how to build them.
``TUNESMITH_NATIVE=0`` turns them off (the reference path, for A/B runs).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from tunesmith.switches import Switch

logger = logging.getLogger("tunesmith")

ENV = "TUNESMITH_NATIVE"
SOURCES = (
    Path(__file__).with_name("kernels.cpp"),
    Path(__file__).with_name("amx_gemm.cpp"),  # the frozen products on AMX tiles
    Path(__file__).with_name("causal_attention.cpp"),  # packed attention's, on tiles or dots
    Path(__file__).with_name("amx_head.cpp"),  # the vocabulary head and its loss on AMX tiles
    Path(__file__).with_name("amx_lora.cpp"),  # LoRA's backward rank-r products on them
    Path(__file__).with_name("dp_lora.cpp"),  # LoRA's products in AVX512-BF16 dot products
)
# included by the sources: part of the name
HEADERS = (Path(__file__).with_name("amx.h"), Path(__file__).with_name("lora.h"))
BUILD_COMMAND = "python -m tunesmith.train.fastpath.native"
LORA_MAX_RANK = 64  # the LoRA kernels' limit on a node's total rank (its branches' ranks summed)

# CPU flags -> (ATen's vector ISA macro, compiler flags). -march=native would tie a shared
# extension folder to one CPU; the ISA is part of the build's name instead.
_ISAS = (
    (
        {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
        ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
         "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    ),
    (
        {"avx2", "fma", "f16c"},
        ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    ),
)  # fmt: skip


enabled = Switch(ENV)  # on unless ENV is 0, off, false or no


def compile_flags() -> list[str]:
    """The compiler flags for this CPU: its best vector ISA that ATen has types for."""
    from tunesmith.precision import cpu_info

    _, flags = cpu_info()
    isa = next((f for need, f in _ISAS if need <= flags), [])
    return ["-O3", "-fopenmp", *isa]


def extension_name() -> str:
    """The build's name: changes with the source, torch's version and the compiler flags."""
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    ident = source + f"|{torch.__version__}|{' '.join(compile_flags())}".encode()
    return f"tunesmith_cpu_{hashlib.sha256(ident).hexdigest()[:12]}"


def buildable() -> str | None:
    """Why these kernels cannot be built here; None when they can."""
    if not sys.platform.startswith("linux"):
        return "they are built for Linux only"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++ or $CXX) on PATH"
    return None


def _build_dir(name: str) -> Path:
    # torch's own rule for where load() builds ``name`` (TORCH_EXTENSIONS_DIR, else its cache).
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def built() -> bool:
    """Whether this machine has the current build (its shared library is in place)."""
    name = extension_name()
    try:
        return (_build_dir(name) / f"{name}.so").is_file()
    except (ImportError, AttributeError, OSError):  # a torch without that rule: build again
        return False


@contextlib.contextmanager
def _ninja_on_path():
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` package's binary sits in the
    environment's bin folder, which is not on PATH when a venv's python is run by its path."""
    try:
        import ninja

        bin_dir = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        bin_dir = None
    saved = os.environ.get("PATH", "")
    if bin_dir and shutil.which("ninja") is None:
        os.environ["PATH"] = bin_dir + os.pathsep + saved
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _load(name: str) -> ModuleType:
    from torch.utils.cpp_extension import load

    with _ninja_on_path():
        return load(
            name,
            [str(path) for path in SOURCES],
            extra_cflags=compile_flags(),
            extra_ldflags=["-fopenmp"],  # resolves to the libgomp torch has loaded (same soname)
            verbose=False,
        )


def _import_built(name: str) -> ModuleType:
    """The built library imported as it is: torch's load() would rebuild it wherever the source
    file is newer than the library (a reinstall), and a run must never compile."""
    if name in sys.modules:  # build() just loaded it through torch's builder
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _build_dir(name) / f"{name}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _kernels() -> ModuleType | None:
    if buildable() is not None or not built():
        return None
    try:
        return _import_built(extension_name())
    except Exception as exc:  # noqa: BLE001 - a broken build must never stop a run
        logger.warning("tunesmith's CPU kernels did not load (%s); using torch's ops", exc)
        return None


def runs_on(*tensors: torch.Tensor, any_dtype: bool = False) -> bool:
    """Whether the kernels are built and take these tensors: bf16 on CPU (the one dtype of all
    but the row copies, which take ``any_dtype``)."""
    for t in tensors:  # a loop over properties: it runs ~1,000 times a step
        if not t.is_cpu or not (any_dtype or t.dtype == torch.bfloat16):
            return False
    return kernels() is not None


def kernels() -> ModuleType | None:
    """The built kernels, or None (not built, not buildable, or ``TUNESMITH_NATIVE=0``)."""
    return _kernels() if enabled() else None


@functools.cache
def amx() -> bool:
    """Whether the kernels' AMX code (``amx_gemm.cpp``, ``causal_attention.cpp``,
    ``amx_head.cpp``, ``amx_lora.cpp``) runs here: the built kernels load, the CPU has AMX-BF16,
    Linux grants the tiles and oneDNN's ISA cap (if set) allows AMX. Fixed for the process; the
    kernels' switch is read apart (:func:`kernels`)."""
    from tunesmith.precision import cpu_info, onednn_isa_cap

    cap = onednn_isa_cap()
    if "amx_bf16" not in cpu_info()[1] or (cap is not None and "AMX" not in cap.upper()):
        return False  # no tiles, or oneDNN held below them (an AVX512-BF16 CPU's emulation)
    module = _kernels()
    return module is not None and bool(module.amx_ready())


@functools.cache
def bf16_dots() -> bool:
    """Whether the kernels' AVX512-BF16 dot products (``causal_attention.cpp``, ``dp_lora.cpp``)
    run here: the built kernels load and the CPU has AVX512-BF16. Fixed for the process."""
    module = _kernels()
    return module is not None and bool(module.dp_ready())


def described() -> str:
    """The kernels' state in this process, for a benchmark's machine line: ``on, AMX tiles``,
    ``on, AVX512-BF16 dot products``, ``on`` or ``off (why)``."""
    if kernels() is None:
        return f"off ({why_not()})"
    if amx():
        return "on, AMX tiles"
    return "on, AVX512-BF16 dot products" if bf16_dots() else "on"


def why_not() -> str:
    """Why :func:`kernels` is None, as one line for the fast paths' log."""
    if not enabled():
        return f"{ENV}=0"
    reason = buildable()
    if reason is not None:
        return reason
    if not built():
        return f"not built on this machine yet (~35 s once: `{BUILD_COMMAND}`)"
    return "the build did not load (see the warning above)"


def build() -> Path:
    """Compile the kernels for this machine (no-op when built); the folder they are in."""
    reason = buildable()
    if reason is not None:
        raise RuntimeError(f"tunesmith's CPU kernels cannot be built here: {reason}")
    name = extension_name()
    _load(name)
    _kernels.cache_clear()
    amx.cache_clear()
    bf16_dots.cache_clear()
    return _build_dir(name)
