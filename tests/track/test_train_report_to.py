"""`tunesmith train --data org/name --report-to ...` end to end: a dataset built in the test
and loaded through the hub-id path (the local datasets cache), a tiny Llama, and every tracker
read back with its own reader (TensorBoard's event accumulator, MLflow's file store, the W&B
offline run directory, Trackio's local database). No network, no mocks."""

from __future__ import annotations

import json

import pytest

from tests.data.hub_fixtures import cache_as_hub, qa_rows
from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """``org/qa`` in a private datasets cache, with `question`/`answer` columns."""
    import datasets

    cache = tmp_path / "hf-datasets"
    cache_as_hub({"train": qa_rows(40), "test": qa_rows(6)}, "org/qa", cache, tmp_path / "src")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def _train(tiny_llama_dir, out, *extra):
    return main(
        [
            "train", "--model", str(tiny_llama_dir), "--data", "org/qa",
            "--columns", "instruction=question,output=answer", "--output", str(out),
            "--max-steps", "6", "--batch-size", "4", "--logging-steps", "2", "--lr", "5e-3",
            "--eval-limit", "4", "--max-new-tokens", "4", "--skip-base-eval", *extra,
        ]
    )  # fmt: skip


def _logged_steps(run):
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_tensorboard_reader_finds_every_logged_loss(hub_cache, tiny_llama_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert _train(tiny_llama_dir, run, "--report-to", "tensorboard") == 0
    report = json.loads((run / "data/clean_report.json").read_text())
    assert report["input_records"] == 40  # the hub path read the train split
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert losses == pytest.approx(_logged_steps(run), abs=1e-6)
    assert sorted(losses) == [2, 4, 6]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss"} <= set(
        acc.Tags()["scalars"]
    )
    assert "config" in " ".join(acc.Tags()["tensors"])  # the config as text
    assert any(t.startswith("plots/") for t in acc.Tags()["images"])


def test_mlflow_wandb_trackio_offline(hub_cache, tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has no SQL store
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    run = tmp_path / "run"
    code = _train(tiny_llama_dir, run, "--report-to", "mlflow,wandb,trackio")
    assert code == 0
    expected = _logged_steps(run)
    state = json.loads((run / "trackers.json").read_text())
    assert set(state) == {"mlflow", "wandb", "trackio"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    history = client.get_metric_history(state["mlflow"]["run_id"], "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(expected, abs=1e-6)
    params = client.get_run(state["mlflow"]["run_id"]).data.params
    assert params["method"] == "lora" and params["data"] == "org/qa"

    offline = list((run / "wandb").rglob("offline-run-*"))
    assert offline and any(p.suffix == ".wandb" for p in offline[0].iterdir())

    import trackio

    logs = trackio.SQLiteStorage.get_logs("tunesmith", run=state["trackio"]["name"])
    trackio_losses = {r["step"]: r["train/loss"] for r in logs if "train/loss" in r}
    assert trackio_losses == pytest.approx(expected, abs=1e-6)


def test_resume_continues_the_same_tracker_runs(hub_cache, tiny_llama_dir, tmp_path, monkeypatch):
    import shutil

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    extra = ("--report-to", "tensorboard,mlflow", "--save-steps", "3", "--logging-steps", "1")
    assert _train(tiny_llama_dir, run, *extra) == 0
    first_id = json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    # The state a crash after step 5 leaves: checkpoint step-3, no final adapter.
    shutil.rmtree(run / "adapter")
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == first_id
    expected = _logged_steps(run)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    # TensorBoard: steps 4-6 of the first attempt are purged, the resumed ones kept.
    assert {e.step: e.value for e in acc.Scalars("train/loss")} == pytest.approx(expected)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    history = MlflowClient(tracking_uri=uri).get_metric_history(first_id, "train/loss")
    assert {m.step for m in history} == set(expected)  # one MLflow run across both attempts
