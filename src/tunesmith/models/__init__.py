"""Model loading: hub ids, local directories, .gguf files and the embedded default; and the one
loader of what training produced (adapters, full fine-tunes, merged checkpoints)."""

from tunesmith.models.adapted import Loaded, load_adapted, load_base, load_merged
from tunesmith.models.artifact import Artifact, locate
from tunesmith.models.loading import ModelSource, load_model_and_tokenizer, resolve_model
from tunesmith.models.shared import SharedBase, load_shared, share_key

__all__ = [
    "Artifact",
    "Loaded",
    "ModelSource",
    "SharedBase",
    "load_adapted",
    "load_base",
    "load_merged",
    "load_model_and_tokenizer",
    "load_shared",
    "locate",
    "resolve_model",
    "share_key",
]
