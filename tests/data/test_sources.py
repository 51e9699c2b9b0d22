"""--data beyond files: datasets folders (save_to_disk, shard folders), hub ids through the
local datasets cache, splits, --columns, and where dropped records are reported."""

from __future__ import annotations

import json

import pytest

from tests.data.hub_fixtures import cache_as_hub, qa_rows, shard_folder
from tunesmith.data.clean import clean
from tunesmith.data.readers import read_files
from tunesmith.data.records import Conversation
from tunesmith.data.sources import ReadOptions, parse_columns, resolve_source
from tunesmith.data.validate import Invalid
from tunesmith.errors import ConfigError, DataError

COLUMNS = parse_columns("instruction=question,output=answer")


def test_resolve_source_kinds(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("{}\n")
    assert resolve_source(str(f)).kind == "file"
    folder = shard_folder({"train": qa_rows(3), "test": qa_rows(2)}, tmp_path / "shards")
    src = resolve_source(f"{folder}@test")
    assert (src.kind, src.split, src.path) == ("folder", "test", str(folder))
    hub = resolve_source("org/name:cfg@validation", revision="v1")
    assert (hub.kind, hub.path, hub.config, hub.split, hub.revision) == (
        "hub", "org/name", "cfg", "validation", "v1",
    )  # fmt: skip
    assert hub.label == "org/name:cfg@validation"
    assert resolve_source("org/name", split="test").split == "test"
    for missing in ("data/train.jsonl", "./org/name", "nothing"):
        with pytest.raises(DataError, match="data file not found"):
            resolve_source(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no dataset"):
        resolve_source(str(tmp_path / "empty"))


def test_parse_columns():
    assert COLUMNS == {"instruction": "question", "output": "answer"}
    assert parse_columns(None) == {}
    with pytest.raises(ConfigError, match="'columns'"):
        parse_columns("instruction")
    with pytest.raises(ConfigError, match="fields among"):
        parse_columns("question=instruction")


@pytest.mark.parametrize("streaming", [False, True])
def test_save_to_disk_folder_with_columns(tmp_path, streaming):
    from datasets import Dataset, DatasetDict

    rows = qa_rows(4) + [{"question": "no answer", "answer": None}]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    options = ReadOptions(columns=COLUMNS, streaming=streaming)
    got = list(read_files([str(tmp_path / "dd")], options=options))
    convs = [g for g in got if isinstance(g, Conversation)]
    assert [c.turns[0].content for c in convs] == [r["question"] for r in rows[:4]]
    assert convs[1].source == f"{tmp_path / 'dd'}@train:index 1"
    (bad,) = [g for g in got if isinstance(g, Invalid)]
    assert bad.to_json() == {
        "file": f"{tmp_path / 'dd'}@train", "line": 4, "reason": "missing field 'output'",
        "kind": "missing_field", "dataset": str(tmp_path / "dd"), "split": "train", "row": 4,
    }  # fmt: skip


@pytest.mark.parametrize("streaming", [False, True])
def test_shard_folder_split(tmp_path, streaming):
    folder = shard_folder({"train": qa_rows(5), "test": qa_rows(2)}, tmp_path / "shards")
    options = ReadOptions(split="test", columns=COLUMNS, streaming=streaming)
    got = list(read_files([str(folder)], options=options))
    assert len(got) == 2 and all(isinstance(g, Conversation) for g in got)
    with pytest.raises(DataError, match=r"[Ss]plit .dev."):
        list(read_files([f"{folder}@dev"], options=ReadOptions(streaming=streaming)))


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_id_through_the_local_cache(tmp_path, monkeypatch, streaming):
    import datasets

    cache = tmp_path / "cache"
    cache_as_hub({"train": qa_rows(6), "test": qa_rows(2)}, "org/qa", cache, tmp_path / "src")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    options = ReadOptions(columns=COLUMNS, streaming=streaming)
    train = list(read_files(["org/qa"], options=options))
    test = list(read_files(["org/qa@test"], options=options))
    assert len(train) == 6 and len(test) == 2
    assert train[0].source == "org/qa@train:index 0"


def test_hub_id_not_cached_offline_is_one_line(tmp_path, monkeypatch, capsys):
    import datasets

    from tunesmith.cli import main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    code = main(["clean", "org/missing", "-o", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.endswith(
        "dataset org/missing is not in the local cache and the hub cannot be reached"
    )
    assert len(err.splitlines()) == 1


def test_clean_report_names_dataset_split_and_row_of_every_drop(tmp_path):
    rows = qa_rows(5)
    rows += [dict(rows[1]), {"question": "Q?", "answer": ""}, dict(rows[3])]
    folder = shard_folder({"train": rows}, tmp_path / "shards")
    result = clean([str(folder)], tmp_path / "out.jsonl", read_options=ReadOptions(columns=COLUMNS))
    report = result.report
    assert report["kept"] == 5 and report["exact_duplicates"] == 2
    label = f"{folder}@train"
    assert [(d["dataset"], d["split"], d["row"], d["reason"]) for d in report["dropped"]] == [
        (str(folder), "train", 5, "exact_duplicates"),
        (str(folder), "train", 7, "exact_duplicates"),
    ]
    (invalid,) = report["invalid"]
    assert (invalid["file"], invalid["row"], invalid["split"]) == (label, 6, "train")
    kept = [json.loads(line) for line in result.train_path.read_text().splitlines()]
    assert kept[0]["messages"][0]["content"] == rows[0]["question"]


def test_windowed_dedup_forgets_old_records(tmp_path):
    from tunesmith.data.clean import clean_conversations

    rows = qa_rows(6)
    convs = [c for c in read_files([str(shard_folder({"train": rows + rows[:1]}, tmp_path / "s"))],
                                   options=ReadOptions(columns=COLUMNS))]  # fmt: skip
    everything = clean_conversations(convs)
    windowed = clean_conversations(convs, dedup_window=3)
    assert everything.report["exact_duplicates"] == 1  # row 6 repeats row 0 ...
    assert windowed.report["exact_duplicates"] == 0  # ... which a 3-record window forgot


def test_clean_cli_reads_a_dataset_folder_with_columns(tmp_path, capsys):
    from tunesmith.cli import main

    folder = shard_folder({"train": qa_rows(5), "test": qa_rows(3)}, tmp_path / "shards")
    out = tmp_path / "out.jsonl"
    args = ["clean", str(folder), "-o", str(out), "--columns", "instruction=question,output=answer"]
    assert main([*args, "--data-split", "test", "--streaming", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_records"] == 3 and report["kept"] == 3
    assert report["options"]["dedup_window"] is not None


def test_stream_plan(tmp_path):
    from tunesmith.config import make_config
    from tunesmith.train.data_plan import DEDUP_WINDOW, stream_plan

    folder = str(shard_folder({"train": qa_rows(3)}, tmp_path / "shards"))
    assert not stream_plan(make_config({"data": [folder]})).streaming  # small: auto is off
    with pytest.raises(ConfigError, match="'streaming'.*--max-steps"):
        stream_plan(make_config({"data": [folder], "streaming": True}))
    plan = stream_plan(
        make_config({"data": [folder], "streaming": True, "max-steps": 5, "batch-size": 2,
                     "grad-accum": 3})
    )  # fmt: skip
    assert (plan.train_limit, plan.dedup_window, plan.read_options.streaming) == (
        30, DEDUP_WINDOW, True,
    )  # fmt: skip
