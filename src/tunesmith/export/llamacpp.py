"""llama.cpp itself, through ``llama-cpp-python`` (the optional ``[llamacpp]`` extra).

Two uses: the K-quants are written by llama.cpp's own quantizer (``llama_model_quantize``), and
every GGUF is loaded by llama.cpp and asked for greedy answers, so an export is checked in the
runtime users deploy to (llama.cpp, Ollama, LM Studio all run this code), not only in our reader.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserInputError, WorkFailed
from tunesmith.export.quants import get_quant

# What to install, said the same way everywhere the extra is missing. The portable build
# (no -march=native) runs on any x86-64 CPU CI may draw.
INSTALL_HINT = (
    "pip install 'tunesmith[llamacpp]' "
    '(builds llama-cpp-python from source; CMAKE_ARGS="-DGGML_NATIVE=OFF" for a portable build)'
)


def available() -> bool:
    """True when ``llama_cpp`` (llama-cpp-python) can be imported."""
    return importlib.util.find_spec("llama_cpp") is not None


def require(what: str):
    """The ``llama_cpp`` module; UserInputError (exit 2) saying what to install otherwise."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise UserInputError(
            f"{what} needs llama.cpp (the llama-cpp-python package), which is not installed: "
            + INSTALL_HINT
        ) from exc
    return llama_cpp


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def quantize(src: Path, dst: Path, quant: str) -> None:
    """Quantize the GGUF ``src`` (f32 or f16) into ``dst`` with llama.cpp's quantizer.

    Tensors whose rows are not a multiple of the K-quant block (256 values) are stored by
    llama.cpp in a fallback type it chooses (q5_0, q5_1 or q8_0), so a small model's file is a
    mix; ``general.file_type`` still names the requested type.

    Raises:
        UserInputError: llama-cpp-python is not installed.
        WorkFailed: llama.cpp reported an error.
    """
    q = get_quant(quant)
    llama_cpp = require(f"--quant {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, q.llamacpp_ftype)
    params.nthread = _threads()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise WorkFailed(f"llama.cpp could not quantize {src} to {quant} (error {rc})")


@dataclass
class Answer:
    """One greedy generation in llama.cpp."""

    ids: list[int]  # generated ids, without the stop token
    stop_id: int | None  # the end-of-generation token that ended it; None: hit the limit
    seconds: float  # prompt processing + generation


class LlamaCppModel:
    """A GGUF file loaded in llama.cpp, generating greedily on the CPU."""

    def __init__(self, path: str | Path, n_ctx: int = 2048):
        llama_cpp = require("checking a GGUF in llama.cpp")
        self._lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=_threads(), seed=0, verbose=False
        )
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF key/values as llama.cpp read them (all values as strings)."""
        return dict(self.llm.metadata)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of rendered text (special tokens parsed, no BOS added)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        """llama.cpp's own end-of-generation test (EOS, EOT and the tokens it knows by name)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> Answer:
        """Generate greedily from ``prompt_ids`` until an end-of-generation token or the limit."""
        start = time.perf_counter()
        out: list[int] = []
        stop = None
        self.llm.reset()
        for token in self.llm.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            if self.is_end_of_generation(token):
                stop = token
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
        return Answer(out, stop, time.perf_counter() - start)

    def close(self) -> None:
        self.llm.close()
