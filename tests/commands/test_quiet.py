"""Commands print no load-time notices of engines they do not use (DeepSpeed, bitsandbytes).

peft imports bitsandbytes and accelerate imports DeepSpeed whenever they are installed; their
notices ("Setting accelerator to CPU", "Failed to load CPU gemm_4bit_forward", the kernels
package's offline trust note) are filtered in ``commands._console.quiet_libraries``. The
commands run as a user runs them, in a fresh process, so the libraries are imported anew.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tests.distributed.helpers import env
from tunesmith.commands._console import quiet_libraries

NOISE = ("real_accelerator", "gemm_4bit", "publisher trust check")


def _cli(*args: str, cwd) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", *args],
        cwd=cwd, env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_and_merge_print_no_engine_notices(tiny_llama_dir, small_demo_data, tmp_path):
    train_file, eval_file = small_demo_data
    run = tmp_path / "run"
    out = _cli(
        "train", "--model", str(tiny_llama_dir), "--data", str(train_file),
        "--eval-data", str(eval_file), "--output", str(run), "--max-steps", "1",
        "--batch-size", "4", "--skip-base-eval", "--eval-limit", "2", "--max-new-tokens", "2",
        cwd=tmp_path,
    )  # fmt: skip
    out += _cli("merge", str(run), "-o", str(tmp_path / "merged"), cwd=tmp_path)
    assert not [line for line in out.splitlines() if any(n in line for n in NOISE)]


def test_deepspeed_accelerator_notice_is_dropped_but_its_errors_are_kept():
    quiet_libraries()
    logger = logging.getLogger("DeepSpeed")
    logger.setLevel(logging.WARNING)  # as DeepSpeed sets it on import, after quiet_libraries

    def record(level, filename):
        return logging.LogRecord("DeepSpeed", level, filename, 213, "Setting ...", None, None)

    assert not logger.filter(record(logging.WARNING, "real_accelerator.py"))
    assert logger.filter(record(logging.ERROR, "real_accelerator.py"))
    assert logger.filter(record(logging.WARNING, "engine.py"))
