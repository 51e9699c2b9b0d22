"""The phases of the GPU check, each split at its first CUDA call.

Every phase is a :class:`Phase`: ``prepare`` does everything that needs no device (model
configs built on the meta device, planner cells and their predictions, trainer arguments,
validated command lines) and returns a :class:`Prepared`; ``execute`` does the CUDA part with
what ``prepare`` built. ``gpu_check.py --dry-run`` calls only ``prepare``, so a CPU machine
checks every step up to the first CUDA call. Time estimates are for one H100-class GPU and
sum to under 8 minutes (see docs/gpu.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Test files holding `@pytest.mark.gpu` tests (collecting the whole suite costs ~30 s there).
GPU_TEST_PATHS = ("tests/gpu", "tests/reliability/test_faults.py")
PLAN_GOAL = (0.95, 1.15)  # predicted / measured allocated bytes, every cell
TRL_GOAL_SPEEDUP, TRL_GOAL_MEMORY = 1.3, 1.0  # vs TRL tuned: tokens/s at most this memory
TRL_STEPS = 30
QLORA_STEPS = 10


@dataclass
class Context:
    """What every phase shares: where to write, the demo model, the time left."""

    out: Path
    work: Path
    dry_run: bool
    full: bool
    demo_kind: str | None  # embedded | carried | None (see gpu_models.demo_model_source)
    deadline: float  # time.monotonic() by which the run should be done
    say: Callable[[str], None] = print

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Prepared:
    """A phase's CPU-side work: a summary for the report, an estimate, objects for execute."""

    summary: dict[str, Any]
    estimate_s: float
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    needs: tuple[str, ...]  # importable modules without which the phase is skipped
    needs_demo_model: bool
    prepare: Callable[[Context], Prepared]
    execute: Callable[[Context, Prepared], dict[str, Any]]
    cuda_only: bool = False  # execute calls torch.cuda directly (no --allow-cpu run)


# -- helpers -----------------------------------------------------------------------------------
def tunesmith_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", *args]


def check_cli(argv: list[str]) -> None:
    """Parse a ``tunesmith`` command line as the CLI will (and its train config, if any)."""
    from tunesmith.cli import build_parser
    from tunesmith.config import config_from_args

    args = build_parser().parse_args(argv[3:])
    if args.command == "train":
        config_from_args(args, args.config_file)


def run_command(argv: list[str], ctx: Context, log: Path) -> dict[str, Any]:
    """Run ``argv`` in the repository, its output to ``log``; exit code, seconds, JSON stdout."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
            timeout=max(ctx.seconds_left(), 0) + 60,
        )  # fmt: skip
    result: dict[str, Any] = {
        "command": " ".join(argv[2:]),
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result["json"] = json_from(proc.stdout)
    if result["json"] is None:
        result["stdout_tail"] = proc.stdout[-2000:]
    if proc.returncode:
        result["stderr_tail"] = log.read_text()[-3000:]
    return result


def json_from(stdout: str) -> Any:
    """The JSON object a ``--json`` command printed, even after a library's stray log line."""
    start = 0 if stdout.startswith("{") else stdout.find("\n{") + 1
    if not stdout.strip() or (start == 0 and not stdout.startswith("{")):
        return None
    try:
        return json.loads(stdout[start:])
    except json.JSONDecodeError:
        return None


# -- 0: the `gpu`-marked tests -------------------------------------------------------------------
def _pytest_argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *extra]


def prepare_tests(ctx: Context) -> Prepared:
    proc = subprocess.run(
        _pytest_argv("--collect-only", *GPU_TEST_PATHS),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"collecting the gpu tests failed:\n{proc.stdout[-2000:]}")
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    return Prepared({"tests": len(ids), "paths": list(GPU_TEST_PATHS)}, 20 + 3 * len(ids))


def execute_tests(ctx: Context, prep: Prepared) -> dict[str, Any]:
    argv = _pytest_argv(*GPU_TEST_PATHS)
    res = run_command(argv, ctx, ctx.out / "gpu_tests.log")
    counts = parse_pytest_counts(res.get("stdout_tail", ""))
    ok = res["exit_code"] == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    return {**res, "counts": counts, "goal": "every gpu test passes, none skipped", "met": ok}


def parse_pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": 9, "skipped": 1}`` from pytest's closing line (the last with `` in ``)."""
    import re

    pattern = r"\d+ (passed|failed|errors?|skipped|deselected)\b.* in "
    closing = [ln for ln in text.splitlines() if re.search(pattern, ln)]
    pairs = re.findall(r"(\d+) ([a-z]+)", closing[-1].split(" in ")[0]) if closing else []
    return {word: int(n) for n, word in pairs}


# -- 1: planner vs measured ----------------------------------------------------------------------
def prepare_planner(ctx: Context) -> Prepared:
    from gpu_models import PLANNER_MODELS, meta_parameter_count, model_config
    from plan_vs_measured import GIB, cuda_cells, predicted

    from tunesmith.methods.qlora import quantization_config

    quantization_config()  # the BitsAndBytesConfig builds (bitsandbytes itself loads later)
    cells = cuda_cells(quick=not ctx.full)
    configs, rows = {}, []
    for name in PLANNER_MODELS:
        cfg = configs[name] = model_config(name)
        params = meta_parameter_count(cfg)
        for method, s, b, gc_on in cells:
            pred = predicted(cfg, method, b, s, gc_on).allocated
            rows.append(
                {
                    "model": name, "params": params, "method": method, "seq": s, "batch": b,
                    "checkpointing": gc_on, "predicted_gib": round(pred / GIB, 4),
                }
            )  # fmt: skip
    # ~8 s to build and save each model on the GPU, ~4 s (0.5B) / 6 s (1B) a cell.
    estimate = 8 * len(configs) + sum(4 if "0.5b" in r["model"] else 6 for r in rows)
    summary = {"models": list(configs), "cells": len(rows), "predicted": rows}
    return Prepared(summary, estimate, {"configs": configs, "cells": cells})


def execute_planner(ctx: Context, prep: Prepared) -> dict[str, Any]:
    import tempfile

    from plan_vs_measured import measure_cuda_cell, write_random_checkpoint

    rows = []
    for name, cfg in prep.state["configs"].items():
        with tempfile.TemporaryDirectory(dir=ctx.work) as ckpt:
            write_random_checkpoint(cfg, ckpt, device="cuda")
            for cell in prep.state["cells"]:
                if ctx.seconds_left() < 0:  # keep the later phases' time: record, do not run
                    rows.append({"model": name, "cell": list(cell), "error": "time budget spent"})
                    continue
                try:
                    rows.append({"model": name, **measure_cuda_cell(cfg, ckpt, *cell)})
                except Exception as exc:  # one failing cell must not hide the others
                    rows.append({"model": name, "cell": list(cell), "error": repr(exc)[:500]})
                ctx.say(f"  planner {name} {cell}: {_short(rows[-1])}")
    met = all(r.get("in_goal") for r in rows)
    lo, hi = PLAN_GOAL
    return {"rows": rows, "goal": f"every cell's ratio within {lo}-{hi}", "met": met}


def _short(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"]
    return f"ratio {r['ratio']} (measured {r['measured_gib']} GiB, reserved {r['reserved_gib']})"


# -- 2: training throughput vs TRL ---------------------------------------------------------------
def prepare_trl(ctx: Context) -> Prepared:
    import importlib.util

    from tunesmith.bench.train.measure import LORA, BenchSettings, adapter_config
    from tunesmith.bench.train.trl_peer import trl_config
    from tunesmith.config import make_config

    settings = BenchSettings(model="embedded", steps=TRL_STEPS)
    make_config({"model": "embedded", **adapter_config(LORA), "batch_size": settings.batch_size})
    configs = {}
    for tuned in (False, True):
        args = trl_config(settings, ctx.work / "trl-args", tuned)
        configs["trl-tuned" if tuned else "trl-default"] = {
            k: getattr(args, k, None)
            for k in ("bf16", "padding_free", "gradient_checkpointing", "use_liger_kernel")
        }
    summary = {
        "settings": {"steps": settings.steps, "batch_size": settings.batch_size, "lora": LORA},
        "trl_configs": configs,
        "liger_kernel_installed": importlib.util.find_spec("liger_kernel") is not None,
    }
    # Three child processes: ~25 s of imports, loading and data each, plus the steps.
    return Prepared(summary, 3 * (25 + 0.15 * settings.steps), {"settings": settings})


def execute_trl(ctx: Context, prep: Prepared) -> dict[str, Any]:
    from gpu_models import demo_model

    from tunesmith.bench.train import bench_train

    settings = prep.state["settings"]
    settings.model = demo_model(ctx.demo_kind, ctx.work)
    report = bench_train(settings, workdir=ctx.work / "trl", progress=ctx.say)
    rows = {r["variant"]: r for r in report["rows"]}
    ours, tuned, default = rows["tunesmith"], rows["trl-tuned"], rows["trl-default"]

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    gpu = {
        "speedup_vs_trl_default": ratio(ours["tokens_per_s"], default["tokens_per_s"]),
        "speedup_vs_trl_tuned": ratio(ours["tokens_per_s"], tuned["tokens_per_s"]),
        "cuda_memory_vs_trl_tuned": ratio(
            ours["cuda_max_allocated_bytes"], tuned["cuda_max_allocated_bytes"]
        ),
        "cuda_memory_vs_trl_default": ratio(
            ours["cuda_max_allocated_bytes"], default["cuda_max_allocated_bytes"]
        ),
    }
    met = (gpu["speedup_vs_trl_tuned"] or 0) >= TRL_GOAL_SPEEDUP and (
        gpu["cuda_memory_vs_trl_tuned"] or 9
    ) <= TRL_GOAL_MEMORY
    for row in report["rows"]:
        row.pop("losses", None)  # per-step losses: long, and not a figure of this check
    return {
        **report,
        "gpu_summary": gpu,
        "goal": f">= {TRL_GOAL_SPEEDUP}x TRL tuned tokens/s at <= {TRL_GOAL_MEMORY}x its memory",
        "met": met,
    }


# -- 3: QLoRA, merge, GGUF export ----------------------------------------------------------------
def _qlora_commands(ctx: Context, model: str) -> list[list[str]]:
    run, merged, gguf = ctx.work / "qlora", ctx.work / "qlora-merged", ctx.work / "qlora.gguf"
    return [
        tunesmith_argv(
            "train", "--model", model, "--method", "qlora", "--max-steps", str(QLORA_STEPS),
            "--eval-limit", "16", "--output", str(run), "--overwrite", "--json",
        ),
        tunesmith_argv("merge", str(run), "-o", str(merged), "--json"),
        tunesmith_argv("export", str(run), "--format", "gguf", "-o", str(gguf), "--json"),
    ]  # fmt: skip


def prepare_qlora(ctx: Context) -> Prepared:
    from tunesmith.export.gguf_writer import check_architecture
    from tunesmith.plan.configs import load_model_config

    check_architecture(load_model_config("embedded"))  # GGUF export supports this model
    commands = _qlora_commands(ctx, "embedded")
    for argv in commands:
        check_cli(argv)
    summary = {"commands": [" ".join(a[3:]) for a in commands]}
    return Prepared(summary, 25 + 20 + 20)


def execute_qlora(ctx: Context, prep: Prepared) -> dict[str, Any]:
    from gpu_models import demo_model

    steps = []
    for i, argv in enumerate(_qlora_commands(ctx, demo_model(ctx.demo_kind, ctx.work))):
        steps.append(run_command(argv, ctx, ctx.out / f"qlora_{i}.log"))
        ctx.say(f"  {argv[3]}: exit {steps[-1]['exit_code']} in {steps[-1]['seconds']} s")
        if steps[-1]["exit_code"]:
            break
    met = len(steps) == 3 and all(s["exit_code"] == 0 for s in steps)
    return {
        "steps": steps,
        "goal": "train, merge and GGUF export each exit 0 (verified)",
        "met": met,
    }


# -- 4: the demo recipe --------------------------------------------------------------------------
DEMO_CONFIG = "examples/smollm2_lora.yaml"


def _demo_command(ctx: Context, model: str) -> list[str]:
    out = ["--output", str(ctx.work / "demo"), "--overwrite", "--json"]
    return tunesmith_argv(
        "train", DEMO_CONFIG, *out, *([] if model == "embedded" else ["--model", model])
    )


def prepare_demo(ctx: Context) -> Prepared:
    argv = _demo_command(ctx, "embedded")
    check_cli(argv)
    return Prepared({"command": " ".join(argv[3:]), "make_demo": "make demo"}, 100)


def execute_demo(ctx: Context, prep: Prepared) -> dict[str, Any]:
    from gpu_models import demo_model

    res = run_command(
        _demo_command(ctx, demo_model(ctx.demo_kind, ctx.work)), ctx, ctx.out / "demo.log"
    )
    summary = res.get("json") or {}
    if summary.get("train_seconds"):
        res["steps_per_s"] = round(summary["steps"] / summary["train_seconds"], 2)
    res["train_command_s"] = res["seconds"]
    return {**res, "goal": "the demo's train command exits 0", "met": res["exit_code"] == 0}


PHASES: tuple[Phase, ...] = (
    Phase("tests", "the gpu-marked tests", ("pytest", "bitsandbytes"), False, prepare_tests, execute_tests),
    Phase("planner", "planner vs torch.cuda.max_memory_allocated", ("bitsandbytes", "peft"), False,
          prepare_planner, execute_planner, cuda_only=True),
    Phase("trl", "training tokens/s and memory vs TRL SFTTrainer", ("trl", "datasets", "peft"), True,
          prepare_trl, execute_trl),
    Phase("qlora", "QLoRA steps, merge and GGUF export", ("bitsandbytes", "gguf"), True,
          prepare_qlora, execute_qlora),
    Phase("demo", "the demo recipe (make demo's train command)", (), True, prepare_demo, execute_demo),
)  # fmt: skip
