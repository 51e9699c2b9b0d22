"""The training configuration: one typed, validated model feeding YAML files and CLI flags.

YAML keys equal the long CLI flags (``max-steps``; ``max_steps`` is accepted too). Every
field's description is its ``--help`` text, so the two never drift apart. Validation happens
before any model loads and names the key, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError, UserInputError
from tunesmith.methods.base import BUILTIN_METHODS, is_method, method_names
from tunesmith.methods.recipes import DEFAULT_RECIPE, RECIPES


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class TrainConfig(BaseModel):
    """Everything a training run needs; written out in full as the run's ``config.yaml``."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=_kebab,
        populate_by_name=True,
        validate_assignment=True,
        allow_inf_nan=False,  # `--epochs inf` or `--lr nan` is a typo, never a setting
    )

    model: str = Field(
        "embedded",
        description="base model: 'embedded' (SmolLM2-135M-Instruct), a hub id, a local dir or a .gguf file",
    )
    data: list[str] = Field(
        default_factory=list,
        description="training data: file(s), datasets folder(s) (save_to_disk or data shards) or hub id(s) org/name[:config][@split]; default: the bundled clinic text-to-SQL demo",
    )
    eval_data: str | None = Field(
        None,
        description="held-out eval file, folder or hub id; default: split from --data (demo: its own held-out set)",
    )
    data_split: str | None = Field(
        None, description="split of datasets whose --data names none with @split (default: train)"
    )
    data_revision: str | None = Field(
        None, description="hub dataset revision: a branch, tag or commit (default: main)"
    )
    columns: str | None = Field(
        None,
        description="map dataset columns onto format fields: FIELD=COLUMN,... e.g. instruction=question,output=answer",
    )
    streaming: bool | None = Field(
        None,
        description="stream the data (bounded memory: dedup within a window, only --max-steps' worth of examples loaded; needs --max-steps); default: auto, on above 2 GiB",
    )
    report_to: str = Field(
        "none",
        description="experiment trackers, comma-separated: tensorboard, wandb, mlflow, trackio, or none",
    )
    method: str = Field(
        "lora",
        description="PEFT method: "
        + ", ".join(BUILTIN_METHODS)
        + " or another registered one (see `tunesmith methods`)",
    )
    recipe: Literal["default", "seed"] = Field(
        "default",
        description="LoRA-family placement, size and dropout: default (all-linear, rank 4, alpha "
        "32, dropout 0) or seed (attn-qv, rank 8, alpha 32, dropout 0.05: the original LoRA "
        "recipe); --target/--rank/--alpha/--dropout given explicitly win",
    )
    target: str = Field(
        DEFAULT_RECIPE["target"],
        description="target modules: preset attn-qv|attn|mlp|all-linear, or a comma list of module "
        "names (default: the recipe's)",
    )
    rank: int = Field(
        DEFAULT_RECIPE["rank"], ge=1, le=4096, description="LoRA rank r (default: the recipe's)"
    )
    alpha: float = Field(
        DEFAULT_RECIPE["alpha"],
        gt=0,
        description="LoRA alpha, scale = alpha/r (default: the recipe's)",
    )
    dropout: float = Field(
        DEFAULT_RECIPE["dropout"],
        ge=0,
        lt=1,
        description="LoRA-family dropout on the adapter's input (default: the recipe's)",
    )
    output: str | None = Field(
        None, description="run directory (default runs/<method>-<timestamp>)"
    )
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (overrides --epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the training data")
    batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description="micro-batch size (examples per forward pass, per process under --nproc)",
    )
    group_by_length: bool = Field(
        False,
        description="batch examples of similar length (less padding; can hurt quality on templated data)",
    )
    grad_accum: int = Field(1, ge=1, le=4096, description="micro-batches per optimizer step")
    lr: float = Field(
        2e-4,
        gt=0,
        le=1.0,
        description="peak learning rate (AdamW); unset, supervised runs take the method's own "
        "(LoRA family 2e-3, full 5e-5, ...: `tunesmith methods --json`), preference runs 2e-4",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps with linear warm-up")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="learning-rate schedule after warm-up"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seq_len: int = Field(
        512,
        ge=8,
        le=1_048_576,
        description="maximum tokens per example (longer ones are dropped by clean)",
    )
    seed: int = Field(42, description="random seed (init, data order, dropout)")
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads for torch, fixed (default: all cores, fewer while other processes need them during a CPU training and its evaluations; see tunesmith.cpu_share and tunesmith.core_watch)",
    )
    nproc: int = Field(
        1,
        ge=1,
        le=4096,
        description="processes (GPUs) on this machine: N > 1 re-launches the run through torchrun; --batch-size is then per process, so a step sees batch-size x grad-accum x N examples (kept in config.yaml: --resume uses the same N)",
    )
    distributed: Literal["auto", "ddp", "fsdp", "deepspeed"] = Field(
        "auto",
        description="multi-process engine: ddp (replicated model), fsdp (FULL_SHARD: weights, gradients, optimizer split over processes) or deepspeed (ZeRO stage 1-3 from --distributed-config); auto = ddp when several processes run (see docs/distributed.md)",
    )
    distributed_config: str | None = Field(
        None,
        description='the DeepSpeed JSON --distributed deepspeed needs (its "auto" values are filled from this run\'s settings)',
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="compute precision; auto = bf16 where the hardware has it"
    )
    on_error: Literal["skip", "fail"] = Field(
        "skip",
        description="bad data records: skip them (listed in clean_report.json) or fail at the first",
    )
    on_nan: Literal["stop", "skip"] = Field(
        "stop",
        description="non-finite loss or gradient: stop (keeping the last checkpoint) or skip that update",
    )
    train_on_prompt: bool = Field(False, description="also compute loss on prompt tokens")
    objective: Literal["sft", "dpo", "orpo", "simpo", "kto"] = Field(
        "sft",
        description="training objective: sft (instruction data), dpo|orpo|simpo (chosen/rejected pairs) or kto (unpaired completions labelled desirable or not)",
    )
    beta: float | None = Field(
        None,
        gt=0,
        description="preference strength: DPO/KTO beta, ORPO lambda, SimPO beta; default: the paper's (dpo, orpo, kto 0.1; simpo 2.0)",
    )
    simpo_gamma: float | None = Field(
        None, ge=0, description="SimPO target reward margin gamma (default 1.0: gamma/beta = 0.5)"
    )
    desirable_weight: float | None = Field(
        None, gt=0, description="KTO weight of desirable examples (default 1.0)"
    )
    undesirable_weight: float | None = Field(
        None, gt=0, description="KTO weight of undesirable examples (default 1.0)"
    )
    sft_weight: float | None = Field(
        None,
        ge=0,
        description="DPO: weight of an SFT term (the chosen answers' token-mean NLL) added to the loss, as RPO (Pang et al. 2024) and TRL's loss_type=['sigmoid', 'sft'] do; it keeps DPO from lowering the chosen answers' likelihood with the rejected ones' (default 0: plain DPO)",
    )
    init_from: str | None = Field(
        None,
        description="continue training a finished run's adapter (e.g. SFT, then DPO): not merged, not stacked, one adapter on the same base; a preference objective's reference is that starting adapter",
    )
    template: Literal["chatml", "alpaca", "llama-2"] | None = Field(
        None,
        description="chat template for a model without one (when given, replaces the model's own)",
    )
    packing: bool = Field(
        False,
        description="pack short examples into --seq-len rows (no attention across examples)",
    )
    eval_limit: int | None = Field(
        None, ge=1, description="evaluate on at most this many held-out examples"
    )
    eval_batch_size: int = Field(32, ge=1, description="batch size for evaluation generation")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="generation limit at evaluation; default 64 for the SQL demo, 256 otherwise",
    )
    skip_base_eval: bool = Field(False, description="do not evaluate the base model (saves time)")
    logging_steps: int = Field(5, ge=1, description="write a metrics row every N steps")
    save_steps: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    num_virtual_tokens: int = Field(20, ge=1, description="prefix/prompt tuning: virtual tokens")
    bottleneck: int = Field(64, ge=1, description="bottleneck adapters: hidden size")
    freeze_top_k: int = Field(2, ge=1, description="freeze: number of top blocks to train")
    trust_remote_code: bool = Field(False, description="allow model code from the model repository")
    allow_pickle: bool = Field(
        False, description="allow pickled .bin weights (default: safetensors only)"
    )
    overwrite: bool = Field(False, description="replace an existing --output directory")
    force: bool = Field(False, description="train even when the memory plan says it will not fit")

    @model_validator(mode="after")
    def _recipe_values(self) -> TrainConfig:
        # The recipe fills what the user did not set; values set explicitly (flags, YAML) win.
        unset = {k: v for k, v in RECIPES[self.recipe].items() if k not in self.model_fields_set}
        if unset and any(getattr(self, k) != v for k, v in unset.items()):
            # __dict__, not setattr: assignment would re-run this validator and mark them set
            self.__dict__.update(unset)
        return self

    @field_validator("method")
    @classmethod
    def _registered_method(cls, v: str) -> str:
        # The choices are the method registry's (a method registered by a plugin or a test is
        # accepted); a built-in name is checked without importing torch and peft.
        if not is_method(v):
            raise ValueError("one of " + ", ".join(method_names()))
        return v

    @field_validator("columns")
    @classmethod
    def _column_map(cls, v: str | None) -> str | None:
        from tunesmith.data.sources import parse_columns

        try:
            parse_columns(v)
        except ConfigError as exc:
            raise ValueError(exc.allowed) from None
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        from tunesmith.trackers import parse_report_to

        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        if not isinstance(v, str):
            return v
        try:
            return ",".join(parse_report_to(v)) or "none"
        except ConfigError as exc:
            raise ValueError(exc.allowed) from None

    @field_validator("data", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, str) else v


def _format_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    key = _kebab(key)
    value = first.get("input")
    allowed = first["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        import difflib

        known = [_kebab(k) for k in TrainConfig.model_fields]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        allowed = f"a known key{hint}: " + ", ".join(known)
    return ConfigError(key, value, allowed)


def make_config(values: dict[str, Any]) -> TrainConfig:
    """Validate a dict (YAML + flags) into a :class:`TrainConfig`, with a readable error."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise _format_error(err) from None


def resolve_lr(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the method's own learning rate when the user set none (supervised runs).

    One rate cannot serve every method: LoRA's low-rank update wants ~10x the rate of full
    fine-tuning (Schulman et al. 2025, "LoRA Without Regret"), and on the demo LoRA at 2e-4
    learns a fraction of what it does at 2e-3 in the same steps (benchmarks/RESULTS.md, "The
    learning-rate search"). Preference runs keep the field's default: they start from a trained
    adapter and move it a little. The resolved rate is written into the run's config, so a
    resume trains at the same rate.
    """
    from tunesmith.methods.base import get_method

    if "lr" in cfg.model_fields_set or cfg.objective != "sft":
        return cfg
    default = get_method(cfg.method).default_lr
    return cfg if default is None else cfg.model_copy(update={"lr": default})


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        # One line: where (file:line) and what, not PyYAML's multi-line excerpt.
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise UserInputError(f"{where}: invalid YAML: {what}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: a config file must be a mapping of keys to values")
    for key in data:
        if not isinstance(key, str):
            # YAML reads `yes:` as True and `1:` as 1: a key that is not text is never a flag.
            raise ConfigError(str(key), data[key], f"keys that are flag names (in {path})")
    return {_kebab(k): v for k, v in data.items()}


def to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(by_alias=True), sort_keys=False, allow_unicode=True)


def _base_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per config field, help text from the field description.

    Defaults are ``SUPPRESS`` so that only flags the user typed override the YAML file.
    """
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + _kebab(name)
        ann = _base_type(field.annotation)
        default = field.default if field.default_factory is None else field.default_factory()
        help_text = f"{field.description} (default: {default})"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if ann is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(ann) is Literal:
            parser.add_argument(flag, choices=typing.get_args(ann), **kw)
        elif typing.get_origin(ann) is list:
            parser.add_argument(flag, nargs="+", metavar="FILE", **kw)
        else:
            parser.add_argument(
                flag, type=ann if ann in (int, float) else str, metavar=name.upper(), **kw
            )


def config_from_args(args: argparse.Namespace, config_file: str | None) -> TrainConfig:
    """YAML file values, overridden by the flags the user typed."""
    values = load_yaml(config_file) if config_file else {}
    for name in TrainConfig.model_fields:
        if hasattr(args, name):
            values[_kebab(name)] = getattr(args, name)
    return make_config(values)
