"""What a trained result on disk is: a PEFT adapter, a full fine-tune, or a merged checkpoint.

Accepted layouts (what ``eval``, ``chat``, ``compare``, ``merge``, ``export`` and ``serve``
take as their source):

* a run directory ``runs/<name>/`` holding ``adapter/`` (PEFT methods) or ``model/`` (full,
  freeze) and ``config.yaml``;
* an adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``), inside a run
  or on its own;
* a full fine-tune's ``model/`` directory (a checkpoint with ``tunesmith_base.json``);
* a merged checkpoint written by ``tunesmith merge`` (a checkpoint with ``tunesmith_merge.json``).

Which base and method made it comes, in this order, from ``tunesmith_base.json`` (written by
training beside the weights; ``embedded`` stays portable across machines), the run's
``config.yaml``, and peft's own ``adapter_config.json``. Everything is validated here, before
any weights load, so a bad source is one :class:`~tunesmith.errors.UserInputError` naming the
file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.errors import UserInputError

if TYPE_CHECKING:
    from tunesmith.methods import MethodSpec

from tunesmith.rundir import RunDir

BASE_INFO = RunDir.BASE_INFO  # {"model": base reference, "method": method name}
MERGE_RECORD = "tunesmith_merge.json"  # written by `tunesmith merge`: base, adapter, dtype
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
RUN_CONFIG = RunDir.CONFIG

Kind = Literal["adapter", "model", "merged"]


@dataclass(frozen=True)
class Artifact:
    """A located, validated trained result.

    Attributes:
        kind: ``adapter`` (PEFT format, needs its base), ``model`` (a full or freeze fine-tune,
            a complete checkpoint) or ``merged`` (an adapter folded into its base).
        path: what the caller passed.
        dir: the directory holding the weights (the adapter, ``model/`` or merged directory).
        base_model: the base reference (``embedded``, hub id, directory, ``.gguf``); empty
            when nothing on disk names it.
        method: the tunesmith method name; empty when unknown.
        run_dir: the run directory the weights belong to, if any.
        adapter_config: the parsed ``adapter_config.json`` (adapters only).
        run_config: the run's ``config.yaml`` as a dict of kebab-case keys, if there is one.
    """

    kind: Kind
    path: Path
    dir: Path
    base_model: str
    method: str
    run_dir: Path | None = None
    adapter_config: dict[str, Any] = field(default_factory=dict, repr=False)
    run_config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def spec(self) -> MethodSpec | None:
        """The registered method spec, or None for a method tunesmith does not know."""
        from tunesmith.methods import get_method

        if not self.method:
            return None
        try:
            return get_method(self.method)
        except UserInputError:
            return None

    @property
    def quantized_base(self) -> bool:
        """Whether training saw a 4-bit base (the adapter must be served on the same)."""
        spec = self.spec
        return self.kind == "adapter" and spec is not None and spec.quantized_base

    @property
    def mergeable(self) -> bool:
        """Whether the adapter folds into the base weights (the method spec decides)."""
        spec = self.spec
        return self.kind == "adapter" and spec is not None and spec.mergeable

    @property
    def peft_type(self) -> str:
        """``peft_type`` of the adapter config (``LORA``, ``IA3``, ...); empty for checkpoints."""
        return str(self.adapter_config.get("peft_type", "")).upper()

    @property
    def has_tokenizer(self) -> bool:
        """Training saves its tokenizer (and chat template) beside the weights."""
        return (self.dir / "tokenizer_config.json").is_file()

    @property
    def trust_remote_code(self) -> bool:
        """Whether the run was trained with ``--trust-remote-code``."""
        return bool((self.run_config or {}).get("trust-remote-code", False))

    @property
    def allow_pickle(self) -> bool:
        """Whether the run was trained with ``--allow-pickle``."""
        return bool((self.run_config or {}).get("allow-pickle", False))


def locate(path: str | Path) -> Artifact:
    """Find and validate the trained result at ``path`` (see the module docstring's layouts).

    Raises:
        UserInputError: ``path`` is missing or holds none of the accepted layouts, or a file
            of it (adapter config, weights, base record, run config) is missing or unreadable.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"{path}: no such run or adapter directory")
    if not p.is_dir():
        raise UserInputError(f"{path}: expected a run, adapter or model directory, not a file")
    for sub in (p / "adapter", p):
        if (sub / ADAPTER_CONFIG).is_file():
            return _adapter(p, sub)
    if (p / "model" / MODEL_CONFIG).is_file():
        return _checkpoint(p, p / "model", "model")
    if (p / MODEL_CONFIG).is_file() and (p / BASE_INFO).is_file():
        return _checkpoint(p, p, "model")
    if (p / MODEL_CONFIG).is_file() and (p / MERGE_RECORD).is_file():
        return _checkpoint(p, p, "merged")
    if (p / MODEL_CONFIG).is_file():
        raise UserInputError(
            f"{path} is a model checkpoint that tunesmith did not train or merge; "
            "load it as a base with --model"
        )
    raise UserInputError(
        f"{path} holds no adapter ({ADAPTER_CONFIG}) or trained model; pass a run directory, "
        "an adapter directory or a merged model directory"
    )


def _adapter(given: Path, adapter_dir: Path) -> Artifact:
    adapter_config = _read_json(adapter_dir / ADAPTER_CONFIG, required=True)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise UserInputError(
            f"{adapter_dir / ADAPTER_WEIGHTS}: missing (only safetensors adapters are accepted)"
        )
    run_dir = _run_dir(given, adapter_dir)
    run_config = _read_run_config(run_dir)
    info = _read_json(adapter_dir / BASE_INFO)
    base = info.get("model") or (run_config or {}).get("model")
    method = info.get("method") or (run_config or {}).get("method")
    if not method:
        from tunesmith.methods.infer import method_from_adapter_config

        method = method_from_adapter_config(adapter_config)
    return Artifact(
        kind="adapter",
        path=given,
        dir=adapter_dir,
        base_model=str(base or adapter_config.get("base_model_name_or_path") or ""),
        method=str(method),
        run_dir=run_dir,
        adapter_config=adapter_config,
        run_config=run_config,
    )


def _checkpoint(given: Path, model_dir: Path, kind: Kind) -> Artifact:
    run_dir = _run_dir(given, model_dir)
    run_config = _read_run_config(run_dir)
    if kind == "merged":
        record = _read_json(model_dir / MERGE_RECORD, required=True)
        base = (record.get("base") or {}).get("name", "")
        method = record.get("method", "")
    else:
        info = _read_json(model_dir / BASE_INFO)
        base = info.get("model") or (run_config or {}).get("model", "")
        method = info.get("method") or (run_config or {}).get("method", "")
    return Artifact(kind, given, model_dir, str(base), str(method), run_dir, {}, run_config)


def _run_dir(given: Path, weights_dir: Path) -> Path | None:
    """The run the weights belong to: ``given`` itself, or the parent of a weights directory."""
    if weights_dir != given:
        return given
    parent = given.resolve().parent
    return parent if (parent / RUN_CONFIG).is_file() else None


def _read_run_config(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / RUN_CONFIG).is_file():
        return None
    from tunesmith.config import load_yaml

    return load_yaml(run_dir / RUN_CONFIG)  # keys normalized to kebab-case


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise UserInputError(f"{path}: missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object")
    return data
