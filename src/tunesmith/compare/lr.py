"""Per-method default learning rates, used only when the user did not choose ``--lr``.

Methods differ in how many parameters they train and how those parameters enter the network,
so one learning rate cannot serve them all: a shared 2e-4 leaves prompt tuning barely moving
and would wreck full fine-tuning at 2e-3. The values below are starting points from the
methods' papers and peft's examples, checked on the bundled clinic demo.
"""

from __future__ import annotations

from tunesmith.config import TrainConfig

# method -> peak AdamW learning rate. Sources:
# - LoRA family: Hu et al. 2022 (arXiv:2106.09685) use 2e-4..5e-4 on large models; on the small
#   SmolLM2 demo with few steps a higher 2e-3 converges fastest. DoRA/rsLoRA/QLoRA share it.
# - Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2021,
#   arXiv:2005.00247; He et al. 2022, arXiv:2110.04366 for parallel and MAM): ~1e-3 (1e-4..1e-3).
# - Prompt tuning (Lester et al. 2021) and IA3 (Liu et al. 2022, arXiv:2205.05638): ~1e-2, as in
#   peft's prompt-based and IA3 examples. Prefix tuning (Li & Liang 2021) trains key/value
#   prefixes in every layer and diverged at 1e-2 on the demo (loss 0.66 at step 20, 6.96 at
#   step 35, never recovered; benchmarks/RESULTS.md); 3e-3 trained smoothly to 0.014.
# - Full fine-tuning and freeze (top blocks only): ~5e-5, the usual full fine-tuning rate.
DEFAULT_LR: dict[str, float] = {
    "lora": 2e-3, "qlora": 2e-3, "dora": 2e-3, "rslora": 2e-3,
    "houlsby": 1e-3, "pfeiffer": 1e-3, "parallel": 1e-3, "mam": 1e-3,
    "prefix": 3e-3, "prompt": 1e-2, "ia3": 1e-2,
    "full": 5e-5, "freeze": 5e-5,
}  # fmt: skip


def lr_for(method: str, cfg: TrainConfig) -> float:
    """The learning rate ``method`` trains with: the user's ``lr`` if they set one, else the table.

    Args:
        method: A method name (``config.METHODS``).
        cfg: The shared config; ``lr`` counts as set when it came from a YAML file, a flag or a
            keyword (pydantic's ``model_fields_set``), not when it is the field default.

    Returns:
        The peak learning rate.
    """
    if "lr" in cfg.model_fields_set or method not in DEFAULT_LR:
        return cfg.lr
    return DEFAULT_LR[method]
