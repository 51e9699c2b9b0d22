"""``--nproc N`` exits with the failing rank's status (distributed/exit_status.py)."""

import subprocess
import sys

import pytest

from tests.distributed.helpers import env
from tunesmith.distributed import exit_status


def test_lowest_failing_rank_wins_and_success_stays_success(tmp_path, monkeypatch):
    monkeypatch.setenv(exit_status.ENV, str(tmp_path))
    for rank, code in (("1", 1), ("0", 2)):
        monkeypatch.setenv("RANK", rank)
        exit_status.note(code)
    exit_status.note(0)  # a clean exit writes nothing
    assert exit_status.collect(tmp_path, 1) == 2
    assert exit_status.collect(tmp_path, 0) == 0


def test_without_a_record_the_launchers_status_stands(tmp_path, monkeypatch):
    assert exit_status.collect(tmp_path, 1) == 1
    (tmp_path / "rank-0").write_text("not a number")
    assert exit_status.collect(tmp_path, 1) == 1
    monkeypatch.delenv(exit_status.ENV, raising=False)
    exit_status.note(2)  # plain torchrun: nothing to write to, no error


@pytest.mark.xdist_group("distributed")
def test_unusable_data_under_nproc_2_exits_2_naming_the_file(tiny_llama_dir, tmp_path):
    # Rank 0 cleans the data (the other rank waits): no usable record is a user error there.
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [ broken\n{"nope": 1}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "train",
            "--nproc",
            "2",
            "--model",
            str(tiny_llama_dir),
            "--data",
            str(data),
            "--max-steps",
            "1",
            "--skip-base-eval",
            "--output",
            str(tmp_path / "run"),
        ],  # fmt: skip
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error:" in proc.stderr and "train.jsonl" in proc.stderr
