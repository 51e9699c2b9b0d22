"""The model card (README.md) of a pushed run, generated from the run directory.

It says what a reader needs to trust and reproduce the result: the base model, the method
and its settings, the data (sources, sizes, what cleaning dropped), the eval table (base vs
tuned), and the exact ``tunesmith train`` command that makes the same run.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from tunesmith.config import TrainConfig
from tunesmith.rundir import RunDir

_CLEAN_KEYS = ("input_records", "kept", "eval_kept", "exact_duplicates", "near_duplicates",
               "repetitive", "too_long", "too_short", "eval_leaks")  # fmt: skip


def reproduce_command(cfg: TrainConfig) -> str:
    """``tunesmith train`` with every setting that differs from its default, as flags."""
    defaults = TrainConfig().model_dump()
    parts = ["tunesmith", "train"]
    for name, value in cfg.model_dump().items():
        if name in ("output", "overwrite", "nproc") or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        elif value is not None:
            parts += [flag, str(value)]
    if cfg.nproc > 1:
        parts += ["--nproc", str(cfg.nproc)]
    return shlex.join(parts)


def _front_matter(cfg: TrainConfig, kind: str) -> str:
    base = "HuggingFaceTB/SmolLM2-135M-Instruct" if cfg.model == "embedded" else cfg.model
    lines = ["---", f"base_model: {base}"]
    if kind == "adapter":
        lines.append("library_name: peft")
    hub_data = [d.split("@")[0].split(":")[0] for d in cfg.data if _is_hub_id(d)]
    if hub_data:
        lines += ["datasets:", *(f"- {d}" for d in hub_data)]
    lines += ["tags:", "- tunesmith", f"- {cfg.method}", "---"]
    return "\n".join(lines)


def _is_hub_id(spec: str) -> bool:
    from tunesmith.data.sources import resolve_source
    from tunesmith.errors import DataError

    try:
        return resolve_source(spec).kind == "hub"
    except DataError:
        return False


def _eval_section(run: RunDir) -> str:
    if not run.eval_path.is_file():
        return "No evaluation was run."
    metrics = json.loads(run.eval_path.read_text()).get("metrics") or {}
    sides = [s for s in ("base", "adapted") if s in metrics]
    names = list(dict.fromkeys(m for s in sides for m in metrics[s]))
    rows = ["| metric | " + " | ".join(sides) + " |", "|---" * (len(sides) + 1) + "|"]
    for m in names:
        cells = [_num(metrics[s].get(m)) for s in sides]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _data_section(cfg: TrainConfig, run: RunDir) -> str:
    sources = ", ".join(f"`{d}`" for d in cfg.data) or "the bundled clinic text-to-SQL demo"
    lines = [f"Data: {sources}" + (f"; eval: `{cfg.eval_data}`" if cfg.eval_data else "") + "."]
    if run.clean_report.is_file():
        report = json.loads(run.clean_report.read_text())
        lines += ["", "Cleaning (`clean_report.json`):", ""]
        lines += [f"- {k.replace('_', ' ')}: {report[k]}" for k in _CLEAN_KEYS if k in report]
        lines.append(f"- invalid: {len(report.get('invalid', []))}")
    return "\n".join(lines)


def model_card(run: RunDir, kind: str, repo_id: str) -> str:
    """The README.md for ``repo_id`` holding ``kind`` (``adapter``, ``merged`` or ``gguf``)."""
    cfg = run.config
    what = {"adapter": "a PEFT adapter", "merged": "a merged checkpoint", "gguf": "a GGUF file"}
    settings = (
        f"rank {cfg.rank}, alpha {cfg.alpha:g}, target `{cfg.target}`, lr {cfg.lr:g}, "
        f"batch {cfg.batch_size} x {cfg.grad_accum}, seq-len {cfg.seq_len}, "
        + (f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs:g} epochs")
    )
    return "\n".join(
        [
            _front_matter(cfg, kind),
            "",
            f"# {repo_id.split('/')[-1]}",
            "",
            f"{what[kind].capitalize()} fine-tuned from `{cfg.model}` with **{cfg.method}** "
            f"({settings}) by [tunesmith](https://github.com/tunesmith).",
            "",
            "## Data",
            "",
            _data_section(cfg, run),
            "",
            "## Evaluation (base vs tuned)",
            "",
            _eval_section(run),
            "",
            "## Reproduce",
            "",
            "```bash",
            reproduce_command(cfg),
            "```",
            "",
        ]
    )
