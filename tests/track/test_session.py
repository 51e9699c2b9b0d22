"""Trackers around a run: start errors before training, failures mid-run isolated, resume."""

from __future__ import annotations

import json

import pytest

from tunesmith import trackers as names
from tunesmith.errors import ConfigError, UserInputError
from tunesmith.rundir import RunDir
from tunesmith.track.base import eval_table, metric_tags
from tunesmith.track.session import Trackers, open_trackers
from tunesmith.trackers import parse_report_to


def test_parse_report_to():
    assert parse_report_to("none") == [] and parse_report_to("") == []
    assert parse_report_to("TensorBoard, wandb,tensorboard") == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="report-to"):
        parse_report_to("comet")


def test_config_normalizes_report_to():
    from tunesmith.config import make_config

    assert make_config({"report-to": ["mlflow", "tensorboard"]}).report_to == "mlflow,tensorboard"
    with pytest.raises(ConfigError, match="'report-to'"):
        make_config({"report-to": "tensorboard,neptune"})


def test_metric_tags_split_train_and_eval():
    step, tags = metric_tags({"step": 5, "loss": 1.5, "lr": 1e-3, "eval_loss": 2.0, "x": "s"})
    assert step == 5 and tags == {"train/loss": 1.5, "train/lr": 1e-3, "eval/loss": 2.0}
    table = eval_table({"metrics": {"base": {"em": 0.1}, "adapted": {"em": 0.5, "n": True}}})
    assert table == {"base": {"em": 0.1}, "adapted": {"em": 0.5}}


class _Flaky:
    def __init__(self):
        self.rows, self.finished = [], False

    def log_metrics(self, metrics, step):
        if step == 2:
            raise OSError("disk full on the tracker's side")
        self.rows.append(step)

    def finish(self):
        self.finished = True


class _Steady(_Flaky):
    def log_metrics(self, metrics, step):
        self.rows.append(step)


def test_a_tracker_failing_mid_run_is_dropped_and_the_others_go_on():
    said = []
    flaky, steady = _Flaky(), _Steady()
    trackers = Trackers({"flaky": flaky, "steady": steady}, said.append)
    for step in (1, 2, 3):
        trackers.log({"step": step, "loss": 1.0})
    assert steady.rows == [1, 2, 3] and flaky.rows == [1] and flaky.finished
    assert len(said) == 1 and "tracker flaky failed" in said[0] and "disk full" in said[0]
    assert list(trackers.live) == ["steady"]


def test_missing_library_is_a_clear_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(
        names.TRACKERS, "wandb", ("tunesmith.track.to_wandb", "no_such_lib_xyz", "tunesmith[wandb]")
    )
    with pytest.raises(UserInputError, match=r"pip install 'tunesmith\[wandb\]'"):
        open_trackers(["wandb"], RunDir(tmp_path), {})


def test_tracker_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:" + str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UserInputError, match="--report-to mlflow: the tracker did not start"):
        open_trackers(["mlflow"], RunDir(tmp_path), {})


def test_resume_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    first = open_trackers(["mlflow"], run, {"method": "lora"})
    first.log({"step": 1, "loss": 2.0})
    first.finish()
    run_id = json.loads(run.trackers_path.read_text())["mlflow"]["run_id"]
    again = open_trackers(["mlflow"], run, {"method": "lora"}, resume_step=1)
    again.log({"step": 2, "loss": 1.0})
    again.finish()
    assert json.loads(run.trackers_path.read_text())["mlflow"]["run_id"] == run_id
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]


def test_resume_continues_tensorboard_and_purges_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    first = open_trackers(["tensorboard"], run, {"method": "lora"})
    for step in (1, 2, 3):  # step 3 was logged, then the run died before checkpointing it
        first.log({"step": step, "loss": float(step)})
    first.finish()
    again = open_trackers(["tensorboard"], run, {}, resume_step=2)
    again.log({"step": 3, "loss": 30.0})
    again.finish()
    acc = EventAccumulator(str(run.tensorboard_dir)).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
