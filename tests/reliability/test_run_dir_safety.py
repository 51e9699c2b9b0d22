"""The run directory never costs a user a file: --overwrite rules, the lock, the swap, resume.

Each case runs the real CLI (in-process, or a second process where two processes are the
point) on the tiny Llama and checks the exit code, one message line without a traceback, and
the file system byte for byte where nothing may change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.rundir import RunDir, RunLock

pytestmark = pytest.mark.xdist_group("tiny-e2e")


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it holds the pid of its latest holder)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != RunDir.LOCK
    }


def _args(model: Path, data: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--data", str(data), "--output", str(out),
        "--max-steps", "2", "--batch-size", "4", "--eval-limit", "2", "--max-new-tokens", "2",
        "--skip-base-eval", *extra,
    ]  # fmt: skip


def _one_error_line(err: str, *words: str) -> None:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert re.match(r"tunesmith( train)?: error: ", last), err
    for w in words:
        assert w in last, f"{w!r} not in: {last}"


@pytest.fixture
def finished_run(tiny_llama_dir, qa_file, tmp_path):
    run = tmp_path / "run"
    assert main(_args(tiny_llama_dir, qa_file, run)) == 0
    return run


def test_overwrite_of_the_current_directory_is_refused(
    tiny_llama_dir, qa_file, tmp_path, monkeypatch, capsys
):
    work = qa_file.parent
    (work / "notes.md").write_text("mine")
    before = _snapshot(work)
    monkeypatch.chdir(work)
    for out in (".", str(work), str(work.parent)):
        code = main(_args(tiny_llama_dir, qa_file, out, "--overwrite"))
        assert code == 2
        _one_error_line(capsys.readouterr().err, "'output'", "current directory")
    assert _snapshot(work) == before


def test_overwrite_of_home_and_root_is_refused(tiny_llama_dir, qa_file, capsys):
    for out in ("/", str(Path.home())):
        assert main(_args(tiny_llama_dir, qa_file, out, "--overwrite")) == 2
        _one_error_line(capsys.readouterr().err, "'output'", "home directory")


def test_overwrite_of_a_folder_that_is_not_a_run_is_refused(
    tiny_llama_dir, qa_file, tmp_path, capsys
):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("keep me")
    assert main(_args(tiny_llama_dir, qa_file, folder, "--overwrite")) == 2
    _one_error_line(capsys.readouterr().err, "only a tunesmith run directory", "notes.md")
    assert (folder / "notes.md").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md"]
    # Names tunesmith uses are not enough: without the run's config.yaml it is not a run.
    other = tmp_path / "looks-like-a-run"
    (other / "data").mkdir(parents=True)
    (other / "data" / "mine.jsonl").write_text("{}")
    assert main(_args(tiny_llama_dir, qa_file, other, "--overwrite")) == 2
    _one_error_line(capsys.readouterr().err, "has no config.yaml")
    assert (other / "data" / "mine.jsonl").read_text() == "{}"


def test_overwrite_of_a_run_holding_a_users_file_is_refused(
    finished_run, tiny_llama_dir, qa_file, capsys
):
    (finished_run / "notes.md").write_text("my notes")
    before = _snapshot(finished_run)
    assert main(_args(tiny_llama_dir, qa_file, finished_run, "--overwrite")) == 2
    _one_error_line(capsys.readouterr().err, "did not write", "notes.md")
    assert _snapshot(finished_run) == before


def test_overwrite_with_bad_new_data_keeps_the_old_run(
    finished_run, tiny_llama_dir, tmp_path, capsys
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    before = _snapshot(finished_run)
    capsys.readouterr()
    assert main(_args(tiny_llama_dir, bad, finished_run, "--overwrite")) == 2
    _one_error_line(capsys.readouterr().err, "no valid records")
    assert _snapshot(finished_run) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no staging left


def test_overwrite_with_a_damaged_model_keeps_the_old_run(
    finished_run, tiny_llama_dir, qa_file, tmp_path, capsys
):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = _snapshot(finished_run)
    capsys.readouterr()
    assert main(_args(broken, qa_file, finished_run, "--overwrite")) == 2
    _one_error_line(capsys.readouterr().err, "damaged or truncated")
    assert _snapshot(finished_run) == before


def test_overwrite_replaces_a_finished_run_by_a_swap(
    finished_run, tiny_llama_dir, qa_file, tmp_path
):
    old_config = (finished_run / "config.yaml").read_text()
    assert main(_args(tiny_llama_dir, qa_file, finished_run, "--overwrite", "--seed", "5")) == 0
    assert (finished_run / "config.yaml").read_text() != old_config
    assert "seed: 5" in (finished_run / "config.yaml").read_text()
    assert (finished_run / "adapter" / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")] == []


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from tunesmith.rundir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


def _hold_lock(run: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_written_by_another_process_is_never_entered(
    finished_run, tiny_llama_dir, qa_file, capsys
):
    before = _snapshot(finished_run)
    holder = _hold_lock(finished_run)
    try:
        for extra in ((), ("--overwrite",)):
            assert main(_args(tiny_llama_dir, qa_file, finished_run, *extra)) == 2
            _one_error_line(capsys.readouterr().err, "in use by process", str(holder.pid))
        assert main(["train", "--resume", str(finished_run)]) == 2
        _one_error_line(capsys.readouterr().err, str(holder.pid))
        assert RunDir(finished_run).state() == "running"
    finally:
        holder.communicate("\n")
    assert _snapshot(finished_run) == before
    assert RunDir(finished_run).state() == "finished"


def test_two_runs_started_into_one_empty_directory_one_loses(
    tiny_llama_dir, qa_file, tmp_path, capsys
):
    out = tmp_path / "shared"
    out.mkdir()
    holder = _hold_lock(out)  # the first run has claimed the directory, nothing written yet
    try:
        assert main(_args(tiny_llama_dir, qa_file, out)) == 2
        _one_error_line(capsys.readouterr().err, "in use by process", str(holder.pid))
    finally:
        holder.communicate("\n")
    assert [p.name for p in out.iterdir()] == [RunDir.LOCK]


def test_a_run_whose_directory_is_replaced_under_it_fails(tiny_llama_dir, qa_file, tmp_path):
    from tunesmith.config import make_config
    from tunesmith.errors import WorkFailed
    from tunesmith.train.run import run_training

    out = tmp_path / "run"
    cfg = make_config(
        {"model": str(tiny_llama_dir), "data": [str(qa_file)], "output": str(out), "max-steps": 2,
         "batch-size": 4, "eval-limit": 2, "max-new-tokens": 2, "skip-base-eval": True}
    )  # fmt: skip

    def say(message: str) -> None:
        if message.startswith("training"):  # another process swaps a new directory in
            os.replace(out, tmp_path / "moved")
            out.mkdir()

    with pytest.raises(WorkFailed, match="removed or replaced"):
        run_training(cfg, say=say)


def _interrupt_base_eval(monkeypatch):
    import tunesmith.train.run as run_mod

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "evaluate_base", stop)


def test_a_stop_before_the_first_checkpoint_can_be_resumed(
    tiny_llama_dir, qa_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = [a for a in _args(tiny_llama_dir, qa_file, out) if a != "--skip-base-eval"]
    _interrupt_base_eval(monkeypatch)
    assert main(args) == 130
    assert RunDir(out).state() == "failed"  # config, plan and data; no checkpoint
    monkeypatch.undo()
    capsys.readouterr()
    # A plain rerun says what to do instead of "not empty".
    assert main(args) == 2
    _one_error_line(capsys.readouterr().err, "unfinished run", f"--resume {out}")
    assert main(["train", "--resume", str(out)]) == 0
    assert "training again from step 0" in capsys.readouterr().out
    assert RunDir(out).state() == "finished"
    assert json.loads((out / "eval.json").read_text())["metrics"]


def test_resume_of_a_finished_run_without_checkpoints_says_so(finished_run, capsys):
    assert main(["train", "--resume", str(finished_run)]) == 2
    _one_error_line(capsys.readouterr().err, "finished training")


def test_lock_is_released_when_the_command_returns(finished_run, tiny_llama_dir, qa_file):
    assert RunLock.holder(finished_run) is None
    lock = RunLock(finished_run).acquire()  # this process could take it again at once
    lock.release()
