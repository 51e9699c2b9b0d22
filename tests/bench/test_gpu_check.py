"""benchmarks/gpu_check.sh: the dry run on CPU, and the pieces it is made of."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
# ~35 s alone on 2 cores; generous because the other xdist worker shares those cores.
SCRIPT_TIMEOUT_S = 600


@pytest.fixture
def bench_modules(monkeypatch):
    """Import the benchmark scripts' modules as ``gpu_check.py`` does (its own folder first)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check
    import gpu_models
    import gpu_phases

    return gpu_check, gpu_phases, gpu_models


def _run_script(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        "TUNESMITH_GPU_CARRY": str(tmp_path / "no-carry"),  # not the checkout's .gpu_carry
        **env,
    }
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])
    )
    try:
        return subprocess.run(
            ["bash", str(BENCH / "gpu_check.sh"), *args],
            capture_output=True, text=True, env=environ, timeout=SCRIPT_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:  # say how far it got: the phase logs and stdout
        logs = sorted(tmp_path.rglob("*.log"))
        tails = "\n".join(f"--- {p.name}:\n{p.read_text()[-1500:]}" for p in logs)
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(
            f"gpu_check.sh ran over {SCRIPT_TIMEOUT_S} s\nstdout:\n{stdout[-3000:]}\n{tails}"
        )


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_dry_run_prepares_every_phase_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = _run_script("--out", str(out), "--dry-run", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    phases = report["phases"]
    assert list(phases) == ["tests", "planner", "trl", "qlora", "demo"]
    assert all(p["status"] == "dry-run" for p in phases.values()), phases
    # Under 8 minutes of GPU time by design, every phase estimated.
    assert all(p["estimate_s"] > 0 for p in phases.values())
    assert report["estimate_s"] == sum(p["estimate_s"] for p in phases.values()) < 480
    planner = phases["planner"]["prepared"]
    assert planner["models"] == ["qwen2.5-0.5b", "llama-3.2-1b"] and planner["cells"] == 24
    cell = {(r["model"], r["method"]) for r in planner["predicted"]}
    assert len(cell) == 6 and all(r["predicted_gib"] > 0 for r in planner["predicted"])
    assert phases["tests"]["prepared"]["tests"] >= 10  # the gpu-marked tests were collected
    tuned = phases["trl"]["prepared"]["trl_configs"]["trl-tuned"]
    assert tuned["padding_free"] and not tuned["gradient_checkpointing"]
    assert [c.split()[0] for c in phases["qlora"]["prepared"]["commands"]] == [
        "train", "merge", "export",
    ]  # fmt: skip
    assert "examples/smollm2_lora.yaml" in phases["demo"]["prepared"]["command"]
    text = (out / "gpu_check.txt").read_text()
    assert "planner cells" in text and "plan: ~" in proc.stdout
    assert not report["device"]["cuda_available"] or report["dry_run"]


def test_without_cuda_a_real_run_refuses_with_exit_2(tmp_path, bench_modules):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    gpu_check, _, _ = bench_modules
    assert gpu_check.main(["--out", str(tmp_path / "o")]) == 2


def test_a_missing_package_skips_its_phases_and_says_which(tmp_path, bench_modules):
    gpu_check, gpu_phases, _ = bench_modules
    versions = dict.fromkeys(gpu_check.PACKAGES, "1.0")
    versions["trl"] = None
    ctx = gpu_phases.Context(tmp_path, tmp_path, True, False, None, 0.0)
    by_name = {p.name: p for p in gpu_phases.PHASES}
    result, prep = gpu_check.prepare_phase(by_name["trl"], ctx, versions, "no demo model here")
    assert prep is None and result["status"] == "skipped"
    assert result["reason"] == "missing: trl, demo model (no demo model here)"
    result, prep = gpu_check.prepare_phase(by_name["tests"], ctx, versions, "")
    assert prep is not None or result["status"] != "skipped"  # needs neither trl nor the model


def test_pytest_counts_are_read_from_the_closing_line(bench_modules):
    _, gpu_phases, _ = bench_modules
    text = "....s\n=== 12 passed, 1 skipped, 2 warnings in 31.20s ===\n"
    assert gpu_phases.parse_pytest_counts(text) == {"passed": 12, "skipped": 1, "warnings": 2}
    assert gpu_phases.parse_pytest_counts("1 failed, 3 passed in 2.0s") == {
        "failed": 1, "passed": 3,
    }  # fmt: skip
    assert gpu_phases.parse_pytest_counts("13 skipped, 16 deselected in 0.32s") == {
        "skipped": 13, "deselected": 16,
    }  # fmt: skip
    assert gpu_phases.parse_pytest_counts("no tests ran in 0.01s") == {}


def test_json_is_read_past_a_stray_log_line(bench_modules):
    _, gpu_phases, _ = bench_modules
    assert gpu_phases.json_from('{"a": 1}\n') == {"a": 1}
    assert gpu_phases.json_from('[WARNING] accelerator: CPU\n{\n  "a": [1]\n}\n') == {"a": [1]}
    assert gpu_phases.json_from("no json here") is None
    assert gpu_phases.json_from("") is None


def test_llama_3_2_1b_shape_matches_its_published_size(bench_modules):
    _, _, gpu_models = bench_modules
    # meta-llama/Llama-3.2-1B: 1.236B parameters with tied embeddings.
    n = gpu_models.meta_parameter_count(gpu_models.model_config("llama-3.2-1b"))
    assert n == pytest.approx(1.236e9, rel=0.01)


def test_carried_demo_model_gets_random_weights_around_the_carried_tokenizer(
    tmp_path, monkeypatch, bench_modules, tiny_llama_dir
):
    import shutil

    from transformers import AutoConfig

    from tunesmith.models.loading import load_model_and_tokenizer

    _, _, gpu_models = bench_modules
    carried = tmp_path / "carry" / gpu_models.DEMO_CARRY
    carried.mkdir(parents=True)
    for f in tiny_llama_dir.iterdir():  # config and tokenizer only, as gpu_carry.sh writes
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, carried / f.name)
    monkeypatch.setenv("TUNESMITH_GPU_CARRY", str(tmp_path / "carry"))
    path = gpu_models.demo_model("carried", tmp_path / "work")
    model, tok, _ = load_model_and_tokenizer(path)
    assert model.config.hidden_size == AutoConfig.from_pretrained(tiny_llama_dir).hidden_size
    assert tok.chat_template and len(tok) == model.config.vocab_size
    assert gpu_models.demo_model("carried", tmp_path / "work") == path  # built once


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_allow_cpu_runs_the_execute_halves_on_the_carried_model(tmp_path, tiny_llama_dir):
    """The CUDA halves' own code (commands, parsing, report) on CPU, with a tiny carried model."""
    carry = tmp_path / "carry" / "smollm2"
    carry.mkdir(parents=True)
    for f in tiny_llama_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (carry / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    proc = _run_script(
        "--out", str(out), "--allow-cpu", "--phases", "tests", "planner", "qlora",
        tmp_path=tmp_path, TUNESMITH_GPU_CARRY=str(tmp_path / "carry"),
        TUNESMITH_GPU_DEMO="carried",
    )  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    phases = report["phases"]
    assert proc.returncode == 1, proc.stderr[-3000:]  # the gpu tests are skipped on CPU
    assert phases["tests"]["status"] == "goal-missed" and phases["tests"]["counts"]["skipped"] >= 10
    assert (
        phases["planner"] | {"status": "skipped", "reason": "needs a CUDA device"}
        == phases["planner"]
    )
    qlora = phases["qlora"]
    train, merge = (step["json"] for step in qlora["steps"][:2])
    assert train["steps"] == 10 and merge["verification"]["passed"]
    export_log = (out / "qlora_2.log").read_text()
    if importlib.util.find_spec("llama_cpp") is not None:
        # The export is also checked in llama.cpp, whose greedy answers on this random-weight
        # model's near ties need not match; the phase ran it and reported the check.
        assert "llama.cpp check" in export_log or qlora["status"] == "ok", qlora
    else:
        assert qlora["status"] == "ok", qlora
        export = qlora["steps"][2]["json"]
        assert export["verification"]["passed"] and export["format"] == "gguf"
    assert "SmolLM2-135M-shaped" in report["demo_model"]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json", "gpu_check.txt", "gpu_tests.log", "qlora_0.log", "qlora_1.log",
        "qlora_2.log",
    ]  # fmt: skip
