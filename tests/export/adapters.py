"""Build real, non-trivial PEFT adapters on the tiny checkpoints (no training needed).

peft initialises LoRA's B (and IA3's scaling vectors) so the adapter starts as a no-op; we
perturb them with a fixed seed so that merged and unmerged models differ from the base.
"""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


def peft_config(method: str):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, TaskType

    if method in ("lora", "qlora", "dora", "rslora"):
        return LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=TARGETS,
            use_dora=method == "dora",
            use_rslora=method == "rslora",
            task_type=TaskType.CAUSAL_LM,
        )
    if method == "ia3":
        return IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"],
            feedforward_modules=["down_proj"],
            task_type=TaskType.CAUSAL_LM,
        )
    if method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=4, task_type=TaskType.CAUSAL_LM)
    raise ValueError(method)


def make_adapter(
    base_dir: Path, out_dir: Path, method: str = "lora", seed: int = 1, nan: bool = False
) -> Path:
    """Save a perturbed adapter for ``base_dir`` into ``out_dir`` (PEFT format)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # peft initializes lora_A from the global RNG: seed it so the adapter (and so the
    # quantization error a test sees) does not depend on which tests ran before.
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, peft_config(method))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "prefix_encoder" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif "ia3_l" in name or "lora_magnitude" in name:
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=gen))
        if nan:
            next(p for n, p in peft_model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def make_run_dir(base_dir: Path, run_dir: Path, method: str) -> Path:
    """A minimal run directory: config.yaml naming model and method, plus adapter/."""
    run_dir.mkdir(parents=True, exist_ok=True)
    make_adapter(base_dir, run_dir / "adapter", method)
    (run_dir / "config.yaml").write_text(f"model: {base_dir}\nmethod: {method}\n", encoding="utf-8")
    return run_dir


def adapted_logits(base_dir: Path, adapter_dir: Path, ids: torch.Tensor, quantization_config=None):
    """Stock transformers + stock peft, unmerged: the reference every export must match."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, quantization_config=quantization_config
    )
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


IDS = torch.tensor([[1, 17, 42, 99, 7, 256, 300, 12, 5, 77, 401, 3]])  # (1, T)
