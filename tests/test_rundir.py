"""RunDir: a run's artifact names, its config read once, its lock and its state."""

import pytest

from tunesmith.config import make_config, to_yaml
from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir, RunLock, RunLocked


def test_the_config_round_trips_what_training_wrote(tmp_path):
    cfg = make_config({"method": "dora", "rank": 4, "trust-remote-code": True})
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert RunDir(tmp_path).config == cfg


def test_a_directory_without_config_is_not_a_run(tmp_path):
    with pytest.raises(UserInputError, match="not a tunesmith run directory"):
        _ = RunDir(tmp_path).config


def test_state_follows_what_is_on_disk(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.state() == "empty"
    run.path.mkdir()
    run.config_path.write_text(to_yaml(make_config({})))
    assert run.state() == "failed"
    (run.checkpoints / "step-2").mkdir(parents=True)
    assert run.state() == "interrupted"
    run.adapter.mkdir()
    assert run.state() == "finished"
    with RunLock(run.path):
        assert run.state() == "running"
    assert run.state() == "finished"


def test_foreign_entries_are_the_files_tunesmith_does_not_write(tmp_path):
    run = RunDir(tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "loss.png", ".tmp-x", "notes.md"):
        (tmp_path / name).write_text("x")
    (tmp_path / "adapter").mkdir()
    assert run.foreign_entries() == ["notes.md"]


def test_a_lock_is_exclusive_and_names_its_holder(tmp_path):
    import os

    first = RunLock(tmp_path).acquire()
    assert RunLock.holder(tmp_path) == os.getpid()
    with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    assert first.still_in_place()
    first.release()
    assert RunLock.holder(tmp_path) is None


def test_a_lock_notices_its_directory_replaced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run).acquire()
    run.rename(tmp_path / "elsewhere")
    run.mkdir()
    assert not lock.still_in_place()
    lock.release()
