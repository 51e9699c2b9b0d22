"""Load a trained result the way training left it: base only, base + adapter, or merged.

The one loader behind ``eval``, ``chat``, ``compare``, ``merge``, ``export`` and ``serve``.
:func:`~tunesmith.models.artifact.locate` says what a path holds; this module loads it:

* the base goes through :func:`~tunesmith.models.loading.load_model_and_tokenizer`, as in
  training: 4-bit NF4 when the method spec says ``quantized_base`` (QLoRA), and the run's own
  ``trust_remote_code`` / ``allow_pickle`` choices unless the caller overrides them;
* the tokenizer saved beside the weights wins over the base's: it carries the chat template
  the model was trained with;
* adapters attach with stock ``PeftModel.from_pretrained`` after
  :func:`tunesmith.methods.load_all` has registered tunesmith's own peft types; DoRA layers
  then evaluate with their weight norm kept between calls (:mod:`tunesmith.methods.dora_norm`);
* :func:`load_merged` folds the adapter into the base (QLoRA: into the base dequantized from
  4-bit, the weights the adapter was trained against), NaN-checked.

Several adapters on one base share it through :mod:`tunesmith.models.shared`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError, WorkFailed
from tunesmith.methods import dora_norm
from tunesmith.models.artifact import ADAPTER_WEIGHTS, Artifact, locate
from tunesmith.models.loading import ModelSource, load_model_and_tokenizer, load_tokenizer


@dataclass
class Loaded:
    """A model ready for inference and where it came from.

    Attributes:
        model: a ``peft.PeftModel`` (adapters) or a transformers model (base, full, merged).
        tokenizer: the trained tokenizer (the artifact's own where it has one).
        artifact: what was located.
        source: what transformers loaded the weights from (the base, for adapters).
        base_model: the base reference the result was trained on (``--model`` spelling).
        base_identity: name and SHA-256 of the base (filled by :func:`load_merged`).
    """

    model: Any
    tokenizer: Any
    artifact: Artifact
    source: ModelSource
    base_model: str
    base_identity: dict[str, Any] | None = None


def as_artifact(source: str | Path | Artifact) -> Artifact:
    """``source`` itself if already located, else :func:`locate` it."""
    return source if isinstance(source, Artifact) else locate(source)


def base_of(artifact: Artifact, base_override: str | None = None) -> str:
    """The base to load: ``base_override``, else the one the artifact names.

    Raises:
        UserInputError: neither names a base.
    """
    base = base_override or artifact.base_model
    if not base:
        raise UserInputError(
            f"{artifact.dir}: cannot tell which base model it belongs to (no base_model_name_or_path "
            "in adapter_config.json, no tunesmith_base.json); pass --model"
        )
    return base


def _load(
    model: str,
    artifact: Artifact,
    *,
    dtype: Any,
    quantized: bool,
    trust_remote_code: bool | None,
    allow_pickle: bool | None,
    device_map: Any,
):
    """``load_model_and_tokenizer`` with the artifact's recorded flags and 4-bit choice."""
    qconf = None
    if quantized:
        from tunesmith.methods.qlora import quantization_config

        qconf = quantization_config()
    trust = artifact.trust_remote_code if trust_remote_code is None else trust_remote_code
    pickle = artifact.allow_pickle if allow_pickle is None else allow_pickle
    model_, tok, src = load_model_and_tokenizer(
        model,
        dtype=dtype,
        quantization_config=qconf,
        trust_remote_code=trust,
        allow_pickle=pickle,
        device_map=device_map,
    )
    if artifact.has_tokenizer:
        tok = load_tokenizer(str(artifact.dir), trust_remote_code=trust)
    return model_.eval(), tok, src


def load_base(
    source: str | Path | Artifact,
    *,
    dtype: Any = None,
    base_override: str | None = None,
    quantized: bool | None = None,
    trust_remote_code: bool | None = None,
    allow_pickle: bool | None = None,
    device_map: Any = None,
) -> Loaded:
    """The base a result was trained on, loaded as training loaded it, with the trained tokenizer.

    Args:
        source: run, adapter, ``model/`` or merged directory, or a located :class:`Artifact`.
        dtype: torch dtype of the weights (default: the checkpoint's own).
        base_override: load this base instead of the recorded one (``--model``).
        quantized: load in 4-bit NF4 (default: when the method spec says ``quantized_base``).
        trust_remote_code: default: as the run was trained (False without a run config).
        allow_pickle: default: as the run was trained (False without a run config).
        device_map: passed to ``from_pretrained``.
    """
    art = as_artifact(source)
    base = base_of(art, base_override)
    model, tok, src = _load(
        base,
        art,
        dtype=dtype,
        quantized=art.quantized_base if quantized is None else quantized,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        device_map=device_map,
    )
    return Loaded(model, tok, art, src, base)


def attach_adapter(model, adapter_dir: str | Path, adapter_name: str = "default"):
    """Stock ``PeftModel.from_pretrained`` on ``adapter_dir``, in inference mode.

    Raises:
        UserInputError: the adapter does not load onto this base (wrong shapes, an unreadable
            weights file, an unknown peft type).
    """
    from peft import PeftModel

    from tunesmith.methods import load_all

    load_all()  # registers tunesmith's peft types (bottleneck adapters, MAM) with peft
    with adapter_load_errors(adapter_dir):
        model = PeftModel.from_pretrained(
            model, str(adapter_dir), adapter_name=adapter_name, is_trainable=False
        )
    dora_norm.install(model)  # DoRA's weight norm once, not at every call
    return model.eval()


def add_adapter(model, adapter_dir: str | Path, adapter_name: str):
    """One more adapter onto a loaded ``PeftModel`` (several on one base), in inference mode and
    with the DoRA evaluation forward, as :func:`attach_adapter` attaches the first."""
    with adapter_load_errors(adapter_dir):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=False)
    dora_norm.install(model)  # the layers only this adapter made DoRA ones


@contextlib.contextmanager
def adapter_load_errors(adapter_dir: str | Path):
    """Turn peft's and safetensors' load errors into one ``UserInputError`` naming the adapter."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        raise UserInputError(
            f"{Path(adapter_dir) / ADAPTER_WEIGHTS}: not a readable safetensors file ({exc})"
        ) from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserInputError(
            f"{adapter_dir}: peft cannot load this adapter onto its base ({exc})"
        ) from exc


def load_adapted(
    source: str | Path | Artifact,
    *,
    dtype: Any = None,
    base_override: str | None = None,
    trust_remote_code: bool | None = None,
    allow_pickle: bool | None = None,
    device_map: Any = None,
) -> Loaded:
    """The trained model: base + unmerged adapter, or the full / merged checkpoint itself.

    Arguments as for :func:`load_base`; for a full or merged checkpoint ``base_override``
    only changes the recorded base name, since its own weights are the model.
    """
    art = as_artifact(source)
    if art.kind != "adapter":
        model, tok, src = _load(
            str(art.dir),
            art,
            dtype=dtype,
            quantized=False,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            device_map=device_map,
        )
        return Loaded(model, tok, art, src, base_override or art.base_model)
    loaded = load_base(
        art,
        dtype=dtype,
        base_override=base_override,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        device_map=device_map,
    )
    loaded.model = attach_adapter(loaded.model, art.dir)
    return loaded


def load_merged(
    source: str | Path | Artifact, dtype, *, base_override: str | None = None
) -> Loaded:
    """Fold the adapter into its base; the result is a plain model in ``dtype``.

    QLoRA: the base is loaded in 4-bit exactly as in training, dequantized to fp32 and the
    adapter folded into that, so the merged weights are the weights the adapter was trained
    on. Other methods fold in ``dtype``. peft's ``safe_merge`` computes each merged weight on a
    copy and raises on NaN; every parameter is checked once more because a NaN in a tensor the
    adapter did not touch would pass that check.

    Raises:
        UserInputError: the method cannot be folded into the base weights.
        WorkFailed: the merged weights hold NaN or inf.
    """
    import torch

    from tunesmith.models.identity import base_identity

    art = as_artifact(source)
    if not art.mergeable:
        raise UserInputError(f"method {art.method!r} ({art.peft_type}) cannot be merged")
    # Fold in fp32 into the dequantized NF4 weights, round to ``dtype`` once at the end.
    loaded = load_base(
        art, dtype=torch.float32 if art.quantized_base else dtype, base_override=base_override
    )
    loaded.base_identity = base_identity(loaded.base_model, loaded.model)
    model = loaded.model
    if art.quantized_base:
        from tunesmith.methods.qlora import dequantize

        model = dequantize(model)
    else:
        model = model.to(dtype)
    try:
        merged = attach_adapter(model, art.dir).merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft's NaN guard
        raise WorkFailed(f"merge failed: {exc}") from exc
    bad = [n for n, p in merged.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise WorkFailed(f"merged weights contain NaN/inf in {len(bad)} tensors, e.g. {bad[0]}")
    merged = merged.to(dtype)
    merged.config.dtype = dtype
    loaded.model = merged.eval()
    return loaded
