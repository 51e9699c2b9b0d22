"""Load everything ``tunesmith serve`` serves: each model name, its weights and its tokenizer.

All model loading of the server sits in :func:`load_served_models`, over the package's one
loader of trained results (:mod:`tunesmith.models`). Runs whose LoRA adapters share a base are loaded
as named adapters onto *one* copy of that base (peft's ``load_adapter``): a request picks its
adapter per row of a batch (peft's mixed-adapter batches, ``adapter_names=``), so requests for
different adapters decode together and nothing is reloaded per request. The base itself is
served too, under its own name. A merged run or a full fine-tune is its own model; an adapter
that peft cannot mix in a batch (DoRA, IA3, bottleneck adapters, QLoRA's 4-bit base) gets its
own copy of the base.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError

BASE_ROW = "__base__"  # peft's adapter name for "no adapter" in a mixed batch
DEFAULT_CONTEXT = 2048  # when neither the config nor the tokenizer states a context length


@dataclass(eq=False)
class Backend:
    """One loaded model; one engine thread decodes for it.

    Attributes:
        model: the causal LM (a ``PeftModel`` when ``mixed`` is true), in eval mode.
        pad_token_id: the id left padding uses.
        context_length: the most tokens (prompt + answer) one row may hold.
        mixed: rows choose their adapter by name (``adapter_names=`` per forward).
        label: what logs call it (the base it was loaded from).
    """

    model: Any
    pad_token_id: int
    context_length: int
    mixed: bool
    label: str


@dataclass(frozen=True)
class ServedModel:
    """One name in ``/v1/models``: which backend runs it, with which adapter and tokenizer.

    ``adapter`` is the peft adapter name a row passes in a mixed batch (``__base__`` for the
    base itself), or ``None`` where the backend serves this one model only.
    """

    name: str
    backend: Backend
    adapter: str | None
    tokenizer: Any
    stop_ids: frozenset[int]
    kind: str  # "base" | "adapter" | "model"
    root: str  # the base it was trained from (OpenAI's ``root`` field)
    created: int = 0
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def parse_adapter_flags(flags: Iterable[str]) -> dict[str, str]:
    """``["name=path", ...]`` -> ``{name: path}``; a malformed or repeated name is bad input."""
    out: dict[str, str] = {}
    for flag in flags:
        name, sep, path = flag.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserInputError(f"--adapter {flag!r}: expected NAME=PATH")
        if name in out:
            raise UserInputError(f"--adapter name {name!r} given twice")
        out[name.strip()] = path.strip()
    return out


def load_served_models(
    run_dirs: Sequence[str | Path] = (),
    *,
    model: str | None = None,
    adapters: Mapping[str, str | Path] | None = None,
    dtype: Any = None,
) -> list[ServedModel]:
    """Load every served model; runs that share a base share one loaded base.

    Args:
        run_dirs: run directories (or adapter / merged-model directories); each is served
            under its directory name.
        model: the base for ``adapters`` and for runs (overrides the base a run names); served
            on its own under this name when nothing else is given.
        adapters: ``{name: path}`` of adapters to serve on ``model`` (or on their own base).
        dtype: torch dtype of the weights (default: the checkpoint's, as ``tunesmith chat``).

    Returns:
        The served models, base models first within each shared base.
    """
    from tunesmith.models import locate

    named = [(_unique_name(Path(p), i), p) for i, p in enumerate(run_dirs)]
    named += list((adapters or {}).items())
    entries = [(name, str(p), locate(p)) for name, p in named]
    _check_unique([n for n, _, _ in entries])
    if not entries:
        return _load_group(model or "embedded", [], dtype)
    served: list[ServedModel] = []
    groups: dict[str, list[tuple[str, Any]]] = {}
    if model is not None:
        groups[model] = []  # --model is served as itself too
    for name, path, art in entries:
        _refuse_prompt_learning(art)
        if art.kind == "model":
            served.append(_load_own(name, path, None, dtype, kind="model"))
            continue
        base = model or art.base_model
        if not base:
            raise UserInputError(f"{art.path}: cannot tell which base model it belongs to; --model")
        if _mixable(art):
            groups.setdefault(base, []).append((name, art))
        else:
            served.append(_load_own(name, path, model, dtype, kind="adapter"))
    for base, members in groups.items():
        served[:0] = _load_group(base, members, dtype)
    _check_unique([m.name for m in served])
    return served


def _unique_name(path: Path, index: int) -> str:
    name = path.resolve().name
    return name or f"run-{index}"


def _check_unique(names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise UserInputError(f"two served models are named {n!r}; use --adapter NAME=PATH")
        seen.add(n)


def _mixable(art) -> bool:
    """Whether peft can run this adapter beside others in one batch (plain LoRA / rsLoRA)."""
    cfg = art.adapter_config or {}
    if art.peft_type != "LORA" or cfg.get("use_dora"):
        return False
    # A QLoRA adapter belongs on the 4-bit base it was trained on, which load_adapted builds.
    return not art.quantized_base


def _refuse_prompt_learning(art) -> None:
    peft_type = str(art.peft_type or "")
    if peft_type in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"):
        raise UserInputError(
            f"{art.path}: {peft_type.lower()} adapters change the token sequence and cannot be "
            "served; serve a LoRA-family, adapter or merged run"
        )


def _load_own(name: str, path: str, base: str | None, dtype: Any, *, kind: str) -> ServedModel:
    """A model on its own backend: a merged/full checkpoint or a non-mixable adapter."""
    from tunesmith.models import load_adapted

    loaded = load_adapted(path, dtype=dtype, base_override=base)
    loaded.model.eval()
    backend = _backend(loaded.model, loaded.tokenizer, mixed=False, label=name)
    return _served(name, backend, None, loaded.tokenizer, kind, loaded.base_model or path)


def _load_group(base: str, members: list[tuple[str, Any]], dtype: Any) -> list[ServedModel]:
    """One base and every mixable adapter on it, as one backend."""
    from tunesmith.models import load_adapted
    from tunesmith.models.adapted import add_adapter
    from tunesmith.models.loading import load_model_and_tokenizer, load_tokenizer

    if not members:
        lm, tok, _ = load_model_and_tokenizer(base, dtype=dtype)
        lm.eval()
        return [_served(base, _backend(lm, tok, mixed=False, label=base), None, tok, "base", base)]
    # The first adapter through load_adapted (the loader chat uses), the rest onto the same
    # PeftModel under internal names: served names may hold characters peft's keys cannot.
    first_name, first = members[0]
    lm = load_adapted(first, dtype=dtype, base_override=base).model
    base_tok = load_tokenizer(base)
    internal = {first_name: lm.active_adapter}
    for i, (name, art) in enumerate(members[1:], start=1):
        internal[name] = f"served_{i}"
        add_adapter(lm, art.dir, internal[name])
    lm.eval()
    backend = _backend(lm, base_tok, mixed=True, label=base)
    served = [_served(base, backend, BASE_ROW, base_tok, "base", base)]
    for name, art in members:
        tok = load_tokenizer(str(art.dir)) if art.has_tokenizer else base_tok
        served.append(_served(name, backend, internal[name], tok, "adapter", base))
    return served


def _backend(lm, tok, *, mixed: bool, label: str) -> Backend:
    cfg = getattr(lm, "config", None)
    ctx = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(ctx, int) or ctx <= 0:
        limit = getattr(tok, "model_max_length", None)
        ctx = limit if isinstance(limit, int) and 0 < limit < 10**7 else DEFAULT_CONTEXT
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Backend(lm, int(pad or 0), int(ctx), mixed, label)


def _served(name, backend, adapter, tok, kind, root) -> ServedModel:
    import time

    from tunesmith.eval.generate import stop_token_ids

    stops = frozenset(stop_token_ids(backend.model, tok))
    return ServedModel(name, backend, adapter, tok, stops, kind, str(root), int(time.time()))
