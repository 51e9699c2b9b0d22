"""Model loading: hub ids, local directories, .gguf files and the embedded default."""

from tunesmith.models.loading import ModelSource, load_model_and_tokenizer, resolve_model

__all__ = ["ModelSource", "load_model_and_tokenizer", "resolve_model"]
