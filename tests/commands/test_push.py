"""`tunesmith push`: the model card and the folder that would be uploaded (a real tiny run);
the upload itself cannot reach the hub here and must fail with one clear line."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, tmp_path_factory):
    from tests.data.hub_fixtures import qa_rows

    tmp = tmp_path_factory.mktemp("push")
    data = tmp / "qa.jsonl"
    rows = [{"instruction": r["question"], "output": r["answer"]} for r in qa_rows(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "run"
    code = main(
        [
            "train", "--model", str(tiny_llama_dir), "--data", str(data), "--output", str(out),
            "--max-steps", "2", "--batch-size", "4", "--rank", "2", "--eval-limit", "3",
            "--max-new-tokens", "4",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_dry_run_builds_the_folder_and_the_card(run_dir, tmp_path, capsys):
    folder = tmp_path / "up"
    assert main(["push", str(run_dir), "me/tiny-qa", "--dry-run", "-o", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "README.md" in out and "adapter_model.safetensors" in out
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert "**lora**" in card and "rank 2" in card
    assert "input records: 30" in card and "exact duplicates: 0" in card
    assert "| metric | base | adapted |" in card  # the eval table, base vs tuned
    assert "tunesmith train --model" in card and "--rank 2" in card and "--max-steps 2" in card


def test_reproduce_command_parses_back_to_the_same_config(run_dir):
    import shlex

    from tunesmith.cli import build_parser
    from tunesmith.config import config_from_args
    from tunesmith.publish.card import reproduce_command
    from tunesmith.rundir import RunDir

    cfg = RunDir(run_dir).config
    args = build_parser().parse_args(shlex.split(reproduce_command(cfg))[1:])
    again = config_from_args(args, None)
    skip = {"output", "overwrite"}
    assert again.model_dump(exclude=skip) == cfg.model_dump(exclude=skip)


def test_upload_offline_fails_with_one_line(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["push", str(run_dir), "me/tiny-qa"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "cannot upload to me/tiny-qa" in err


def test_bad_repo_id_is_usage_error(run_dir, capsys):
    assert main(["push", str(run_dir), "not-a-repo-id", "--dry-run"]) == 2
    assert "expected org/name" in capsys.readouterr().err
