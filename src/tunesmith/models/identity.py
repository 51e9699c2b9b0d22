"""Which exact base and adapter a merged model was made from: names and SHA-256 digests.

A merged checkpoint records both (``tunesmith_merge.json``), so anyone holding it can check it
against the files it claims to come from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tunesmith.models.artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Artifact


def sha256_files(paths: list[Path]) -> str:
    """One SHA-256 over the files' names and bytes, in sorted order (1 MiB chunks)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def checkpoint_path(base_model: str) -> Path | None:
    """The local directory holding the base's weights, if it can be found without a download."""
    from tunesmith.models.loading import resolve_model

    src = resolve_model(base_model)
    if Path(src.path).is_dir():
        return Path(src.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src.path, local_files_only=True))
    except Exception:  # not cached locally: identity falls back to the loaded tensors
        return None


def base_identity(base_model: str, model=None) -> dict[str, Any]:
    """Name + SHA-256 over the base's weight files, else over ``model``'s tensors.

    Args:
        base_model: the base reference the adapter was trained on.
        model: the loaded base (before any adapter is folded in); hashed only when no weight
            file of the base is on this machine.
    """
    path = checkpoint_path(base_model)
    files = sorted(path.glob("*.safetensors")) if path else []
    if files:
        return {
            "name": base_model,
            "path": str(path),
            "sha256": sha256_files(files),
            "hashed": [f.name for f in files],
        }
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"name": base_model, "path": None, "sha256": h.hexdigest(), "hashed": "state_dict"}


def adapter_identity(artifact: Artifact) -> dict[str, Any]:
    """Path + SHA-256 over the adapter's config and weights."""
    files = [artifact.dir / ADAPTER_CONFIG, artifact.dir / ADAPTER_WEIGHTS]
    return {"path": str(artifact.dir.resolve()), "sha256": sha256_files(files)}
