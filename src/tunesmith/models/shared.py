"""Several adapters on one loaded base: serve many runs of the same base from one copy of it.

peft keeps every adapter loaded into a ``PeftModel`` under its own name; one is active at a
time (:meth:`SharedBase.select`), and ``disable_adapter()`` gives the plain base. Only
adapters that would load the same base the same way can share it: same base checkpoint, same
4-bit choice (a QLoRA adapter needs the NF4 base it was trained on, a LoRA adapter the
full-precision one) and the same peft type (peft cannot mix, e.g., LoRA and prefix tuning in
one model). :func:`share_key` says which runs can go together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError
from tunesmith.models.adapted import (
    add_adapter,
    as_artifact,
    attach_adapter,
    base_of,
    load_base,
)
from tunesmith.models.artifact import Artifact
from tunesmith.models.loading import ModelSource, load_tokenizer, resolve_model

Source = str | Path | Artifact


@dataclass
class SharedBase:
    """One base with several adapters loaded onto it.

    Attributes:
        model: the ``peft.PeftModel`` holding every adapter.
        tokenizers: adapter name -> its trained tokenizer (chat templates may differ per run).
        adapters: adapter name -> what it was loaded from, in loading order.
        source: what transformers loaded the base from.
        base_model: the base reference (``--model`` spelling) of the first adapter.
    """

    model: Any
    tokenizers: dict[str, Any]
    adapters: dict[str, Artifact]
    source: ModelSource
    base_model: str

    @property
    def names(self) -> list[str]:
        """The adapter names, in loading order."""
        return list(self.adapters)

    def select(self, name: str):
        """Make ``name`` the active adapter (frozen, inference mode) and return the model."""
        if name not in self.adapters:
            raise UserInputError(f"no adapter {name!r}; loaded: {', '.join(self.adapters)}")
        self.model.set_adapter(name, inference_mode=True)
        return self.model

    @contextlib.contextmanager
    def base_only(self) -> Iterator[Any]:
        """The plain base, every adapter switched off, for the duration of the block."""
        active = self.model.active_adapter
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            # peft's re-enabling marks the adapter trainable again; keep it frozen.
            self.model.set_adapter(active, inference_mode=True)


def share_key(source: Source, base_override: str | None = None) -> tuple[str, bool, str]:
    """``(base checkpoint, 4-bit, peft type)``: adapters with equal keys can share a base."""
    art = as_artifact(source)
    if art.kind != "adapter":
        raise UserInputError(
            f"{art.path}: a {art.kind} checkpoint is a whole model; only adapters share a base"
        )
    return resolve_model(base_of(art, base_override)).path, art.quantized_base, art.peft_type


def adapter_name(artifact: Artifact) -> str:
    """A default name: the run directory's (else the adapter directory's) name.

    peft keeps adapters in module dicts, whose keys cannot contain dots.
    """
    where = artifact.run_dir or artifact.dir
    return where.resolve().name.replace(".", "_")


def load_shared(
    sources: Sequence[Source] | Mapping[str, Source],
    *,
    dtype: Any = None,
    base_override: str | None = None,
    trust_remote_code: bool | None = None,
    allow_pickle: bool | None = None,
    device_map: Any = None,
) -> SharedBase:
    """Load one base and every adapter of ``sources`` onto it; the first one is active.

    Args:
        sources: run or adapter directories (named by :func:`adapter_name`), or a mapping
            adapter name -> directory.
        dtype, base_override, device_map: as for :func:`~tunesmith.models.adapted.load_base`.
        trust_remote_code, allow_pickle: default: True where any of the runs was trained so.

    Raises:
        UserInputError: no sources, a duplicate or dotted name, a source that is not an
            adapter, or adapters that cannot share one base (see :func:`share_key`).
    """
    named = _named_artifacts(sources)
    keys = {name: share_key(art, base_override) for name, art in named.items()}
    first, key = next(iter(keys.items()))
    for name, other in keys.items():
        if other != key:
            raise UserInputError(
                f"adapters {first!r} and {name!r} cannot share one base: base, 4-bit loading "
                f"and peft type differ ({key} vs {other})"
            )
    arts = list(named.values())
    if trust_remote_code is None:
        trust_remote_code = any(a.trust_remote_code for a in arts)
    if allow_pickle is None:
        allow_pickle = any(a.allow_pickle for a in arts)
    loaded = load_base(
        arts[0],
        dtype=dtype,
        base_override=base_override,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        device_map=device_map,
    )
    model = attach_adapter(loaded.model, arts[0].dir, adapter_name=first)
    tokenizers = {first: loaded.tokenizer}
    for name, art in list(named.items())[1:]:
        add_adapter(model, art.dir, name)
        tokenizers[name] = (
            load_tokenizer(str(art.dir), trust_remote_code=trust_remote_code)
            if art.has_tokenizer
            else loaded.tokenizer
        )
    model.set_adapter(first, inference_mode=True)
    return SharedBase(model.eval(), tokenizers, named, loaded.source, loaded.base_model)


def _named_artifacts(sources: Sequence[Source] | Mapping[str, Source]) -> dict[str, Artifact]:
    if isinstance(sources, Mapping):
        pairs = [(str(name), as_artifact(src)) for name, src in sources.items()]
    else:
        arts = [as_artifact(src) for src in sources]
        pairs = [(adapter_name(art), art) for art in arts]
    if not pairs:
        raise UserInputError("no adapters to load")
    named: dict[str, Artifact] = {}
    for name, art in pairs:
        if not name or "." in name:
            raise UserInputError(f"adapter name {name!r} must be non-empty and contain no dots")
        if name in named:
            raise UserInputError(
                f"two adapters are both named {name!r} ({named[name].path}, {art.path}); "
                "name them explicitly"
            )
        named[name] = art
    return named
