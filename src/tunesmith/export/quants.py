"""The GGUF quantization types ``--quant`` offers, and what each promises.

One table answers, for every type: who writes it (the ``gguf`` package directly, or llama.cpp's
own quantizer for the K-quants, never a hand-written K-quant), how many bytes a weight costs on
disk, and which check in llama.cpp it must pass before the file is published.

Two kinds of check, by how much a type changes the weights:

* ``answers``: types that keep ~8 bits or more per weight (f32, f16, bf16, q8_0) must give the
  *same* greedy answer as the adapted model on at least 95% of the held-out prompts;
* ``task``: 4-6 bit types change enough near-tied tokens that answers may be worded differently
  while still being right, so the task metric (execution accuracy / exact match) must stay
  within 3 points of the adapted model's.

Every type must also stop: on each prompt where the adapted model ended its turn, llama.cpp
must end with one of the end-of-turn tokens the model was trained to emit.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import ConfigError


@dataclass(frozen=True)
class Quant:
    """One ``--quant`` choice.

    Attributes:
        name: the CLI name (llama.cpp's own spelling, lower case).
        file_type: ``gguf.LlamaFileType`` member recorded as ``general.file_type``.
        ggml_type: ``gguf.GGMLQuantizationType`` of the matrices when written directly; ``None``
            for the K-quants, which llama.cpp's ``llama_model_quantize`` writes.
        llamacpp_ftype: the ``llama_cpp.LLAMA_FTYPE_*`` constant for ``llama_model_quantize``.
        bytes_per_param: file bytes per weight (for the free-disk check before writing).
        check: ``answers`` or ``task`` (see the module docstring).
    """

    name: str
    file_type: str
    ggml_type: str | None
    llamacpp_ftype: str | None
    bytes_per_param: float
    check: str

    @property
    def via_llamacpp(self) -> bool:
        """True when only llama.cpp's quantizer can write this type."""
        return self.ggml_type is None


# Block sizes from ggml-common.h: q8_0 34 B / 32 weights, q5_0 22 B / 32, q4_0 18 B / 32;
# K-quant mixes are estimates over their per-tensor types (q6_k alone: 210 B / 256).
QUANTS: dict[str, Quant] = {
    q.name: q
    for q in (
        Quant("f32", "ALL_F32", "F32", None, 4.0, "answers"),
        Quant("f16", "MOSTLY_F16", "F16", None, 2.0, "answers"),
        Quant("bf16", "MOSTLY_BF16", "BF16", None, 2.0, "answers"),
        Quant("q8_0", "MOSTLY_Q8_0", "Q8_0", None, 34 / 32, "answers"),
        Quant("q5_0", "MOSTLY_Q5_0", "Q5_0", None, 22 / 32, "task"),
        Quant("q4_0", "MOSTLY_Q4_0", "Q4_0", None, 18 / 32, "task"),
        Quant("q6_k", "MOSTLY_Q6_K", None, "LLAMA_FTYPE_MOSTLY_Q6_K", 0.86, "task"),
        Quant("q5_k_m", "MOSTLY_Q5_K_M", None, "LLAMA_FTYPE_MOSTLY_Q5_K_M", 0.75, "task"),
        Quant("q4_k_m", "MOSTLY_Q4_K_M", None, "LLAMA_FTYPE_MOSTLY_Q4_K_M", 0.65, "task"),
    )
}
QUANT_NAMES = tuple(QUANTS)
DEFAULT_QUANT = "f16"

# The llama.cpp check's limits, stated once (docs/export.md quotes them).
MIN_SAME_ANSWERS = 0.95  # share of held-out prompts with the adapted model's exact greedy answer
MAX_METRIC_DROP = 3.0  # task-metric points (percent) the GGUF may lose against the adapted model


def get_quant(name: str) -> Quant:
    """The :class:`Quant` called ``name``; ConfigError (exit 2) naming the choices otherwise."""
    if name not in QUANTS:
        raise ConfigError("quant", name, "one of " + ", ".join(QUANT_NAMES))
    return QUANTS[name]
