"""Name the tunesmith method behind a PEFT ``adapter_config.json`` that carries no record of it.

tunesmith writes ``tunesmith_base.json`` beside every adapter it trains; adapters made by
other tools only have peft's own config, whose ``peft_type`` (and, for LoRA, the DoRA and
rsLoRA switches) tells the method apart.
"""

from __future__ import annotations

from typing import Any

# peft types that map one-to-one onto a tunesmith method.
_BY_PEFT_TYPE = {"IA3": "ia3", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt", "MAM": "mam"}


def method_from_adapter_config(adapter_config: dict[str, Any]) -> str:
    """The tunesmith method name for ``adapter_config`` (peft's lower-cased type if unknown).

    A LoRA config is ``dora`` with ``use_dora``, ``rslora`` with ``use_rslora``, else ``lora``
    (a QLoRA adapter looks like a LoRA one: only the run's record says its base was 4-bit);
    a bottleneck config names its placement in ``variant``.
    """
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    if peft_type == "LORA":
        if adapter_config.get("use_dora"):
            return "dora"
        return "rslora" if adapter_config.get("use_rslora") else "lora"
    if peft_type == "BOTTLENECK" and adapter_config.get("variant"):
        return str(adapter_config["variant"])  # houlsby | pfeiffer | parallel
    return _BY_PEFT_TYPE.get(peft_type, peft_type.lower())
