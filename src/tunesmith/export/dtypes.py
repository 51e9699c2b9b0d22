"""Output dtypes of merge and export: names on the command line, and the base's own dtype.

``--dtype auto`` keeps the dtype the base checkpoint stores, so a bf16 base is never silently
upcast to fp32 by merging.
"""

from __future__ import annotations

import json

from tunesmith.errors import ConfigError

DTYPES = ("auto", "bf16", "fp16", "fp32")


def torch_dtype(name: str):
    """The torch dtype of ``bf16`` / ``fp16`` / ``fp32``."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ConfigError("dtype", name, "one of " + ", ".join(DTYPES))
    return table[name]


def dtype_label(dtype) -> str:
    """``bf16`` / ``fp16`` / ``fp32`` for a torch dtype."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def checkpoint_dtype(base_model: str):
    """The dtype the base checkpoint stores: config ``dtype``, else its first float tensor."""
    import torch

    from tunesmith.models.identity import checkpoint_path

    path = checkpoint_path(base_model)
    if path is None:
        return None
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str) and hasattr(torch, name):
        return getattr(torch, name)
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = fh.get_slice(key)
                dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(
                    t.get_dtype()
                )
                if dt is not None:
                    return dt
    return None
