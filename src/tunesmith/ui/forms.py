"""The New-run form: fields generated from :class:`TrainConfig`, checked by the CLI's own parser.

The form's values become ``tunesmith train`` flags and go through the very parser the CLI
builds (:func:`tunesmith.config.add_config_arguments`, then
:func:`~tunesmith.config.config_from_args`), so an error reads exactly as the CLI prints it.
The memory plan is the trainer's own (:func:`tunesmith.train.guard.memory_plan`).
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any, Literal

from tunesmith.config import TrainConfig, _base_type, _kebab, add_config_arguments
from tunesmith.errors import ConfigError, UserInputError

# Fields naming files or directories: relative to the workspace (absolute and '..' refused).
PATH_FIELDS = ("model", "data", "eval-data", "output", "init-from", "distributed-config")
# The fields shown first; the rest sit under "more settings".
MAIN_FIELDS = (
    "model", "data", "eval-data", "method", "output", "max-steps", "epochs", "batch-size",
    "grad-accum", "lr", "rank", "seq-len", "logging-steps", "save-steps",
)  # fmt: skip
# The plan's recommendation keys that are also config fields (applied by one click).
RECOMMENDED = {"method": "method", "batch_size": "batch-size", "grad_accum": "grad-accum",
               "seq_len": "seq-len"}  # fmt: skip


def field_schema() -> list[dict[str, Any]]:
    """Every config field: name (the flag), kind, choices, default and help text."""
    out = []
    for name, field in TrainConfig.model_fields.items():
        ann = _base_type(field.annotation)
        default = field.default if field.default_factory is None else field.default_factory()
        if ann is bool:
            kind, choices = "bool", None
        elif typing.get_origin(ann) is Literal:
            kind, choices = "choice", list(typing.get_args(ann))
        elif typing.get_origin(ann) is list:
            kind, choices = "list", None
        else:
            kind, choices = {int: "int", float: "float"}.get(ann, "str"), None
        if name == "method":
            from tunesmith.methods.base import method_names

            kind, choices = "choice", list(method_names())
        key = _kebab(name)
        out.append({
            "name": key, "kind": kind, "choices": choices, "default": default,
            "help": field.description or "", "main": key in MAIN_FIELDS,
        })  # fmt: skip
    return out


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, with the message the CLI would print."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserInputError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tunesmith train", add_help=False)
    add_config_arguments(p)
    return p


def to_argv(values: dict[str, Any]) -> list[str]:
    """Form values (flag name -> value; empty means default) as ``tunesmith train`` flags."""
    if not isinstance(values, dict):
        raise UserInputError("the form must be an object of field -> value")
    kinds = {f["name"]: f["kind"] for f in field_schema()}
    argv: list[str] = []
    for key, value in values.items():
        if key not in kinds:
            raise ConfigError(str(key), value, "a known key: " + ", ".join(kinds))
        if value is None or value == "" or value == []:
            continue
        if kinds[key] == "bool":
            if not isinstance(value, bool):
                raise ConfigError(key, value, "true or false")
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif kinds[key] == "list":
            items = value if isinstance(value, list) else str(value).split(",")
            argv += [f"--{key}", *[str(v).strip() for v in items if str(v).strip()]]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def check_paths(values: dict[str, Any]) -> None:
    """Path fields stay in the workspace: absolute paths and ``..`` parts are refused."""
    from tunesmith.ui.workspace import Workspace

    probe = Workspace("/")  # only the shape of the path is checked here
    for key in PATH_FIELDS:
        value = values.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.strip():
                try:
                    probe.resolve(item)
                except UserInputError as exc:
                    raise ConfigError(key, item, f"a path inside the workspace ({exc})") from None


def validate(values: dict[str, Any]) -> TrainConfig:
    """The config these form values give, or the CLI's error (:class:`UserInputError`)."""
    from tunesmith.config import config_from_args

    if not isinstance(values, dict):
        raise UserInputError("the form must be an object of field -> value")
    check_paths(values)
    args = _parser().parse_args(to_argv(values))
    return config_from_args(args, None)


def errors(values: dict[str, Any]) -> list[dict[str, str]]:
    """``[{"key", "message"}]``: empty when the form is valid (key "" when not one field's)."""
    try:
        validate(values)
    except ConfigError as exc:
        return [{"key": exc.key, "message": str(exc)}]
    except UserInputError as exc:
        text = str(exc)
        key = (
            text.split()[1].removeprefix("--").rstrip(":") if text.startswith("argument --") else ""
        )
        return [{"key": key, "message": text}]
    return []


def plan(cfg: TrainConfig, root: Path) -> dict[str, Any]:
    """The trainer's memory plan for ``cfg``: ``plan.json``'s object plus ``fits`` and, when
    it does not fit, the message ``tunesmith train`` refuses with."""
    import torch

    from tunesmith.models.loading import resolve_model
    from tunesmith.precision import default_device, resolve_precision
    from tunesmith.train import guard

    local = root / cfg.model
    source = resolve_model(str(local) if cfg.model != "embedded" and local.exists() else cfg.model)
    model_config = guard.model_config_for(source.path, cfg.trust_remote_code)
    device = default_device()
    precision = resolve_precision(cfg.precision, torch.device(device))
    refusal = None
    try:
        guard.memory_plan(cfg.model_copy(update={"force": False}), model_config, device, precision)
    except UserInputError as exc:
        refusal = str(exc)
    planned = guard.memory_plan(
        cfg.model_copy(update={"force": True}), model_config, device, precision
    )
    rec = planned.recommendation
    apply = {RECOMMENDED[k]: rec[k] for k in RECOMMENDED if rec.get(k) is not None}
    return {**planned.to_json(), "fits": refusal is None, "refusal": refusal, "apply": apply}
