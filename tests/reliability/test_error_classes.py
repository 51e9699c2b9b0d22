"""Each class of failure at a boundary (data, configs, models, adapters, outputs, numbers) ends
in one line and the right exit code, with nothing half-made; anything else meets the safety net.

One example per class runs the real CLI in-process; the class, not the example, is what each
fix covers (see docs/reliability.md).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("tiny-e2e")


def _fails(argv: list[str], capsys, code: int, *words: str) -> str:
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert re.match(r"tunesmith( \w+)?: (error|failed)", last), err
    for w in words:
        assert w in last, f"{w!r} not in: {last}"
    return last


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- data -----------------------------------------------------------------------------------
def test_a_corrupt_parquet_page_is_bad_input(qa_file, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in qa_file.read_text().splitlines()]
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("instruction", "output")}), path)
    raw = bytearray(path.read_bytes())
    raw[60:200] = b"\xab" * 140  # the first data page, after the magic bytes
    path.write_bytes(bytes(raw))
    before = _snapshot(tmp_path)
    _fails(
        ["clean", str(path), "-o", str(tmp_path / "out.jsonl")], capsys, 2, "qa.parquet", "Parquet"
    )
    assert _snapshot(tmp_path) == before


def test_a_record_with_a_key_given_twice_is_invalid(tmp_path):
    from tunesmith.data.readers import read_file
    from tunesmith.data.validate import Invalid

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        '{"instruction": "a", "output": "first", "output": "second"}\n'
        '{"instruction": "b", "output": "fine"}\n'
        '{"messages": [{"role": "user", "content": "x", "content": "y"}]}\n'
    )
    array = tmp_path / "d.json"
    array.write_text(
        '[{"instruction": "a", "output": "1", "output": "2"}, {"instruction": "b", "output": "ok"}]'
    )
    for path in (jsonl, array):
        got = list(read_file(path))
        bad = [r for r in got if isinstance(r, Invalid)]
        assert [r.line for r in bad] == ([1, 3] if path == jsonl else [1])
        assert "duplicate key 'output'" in bad[0].reason
        assert sum(not isinstance(r, Invalid) for r in got) == 1


# -- configs and numbers --------------------------------------------------------------------
@pytest.mark.parametrize("text", ["yes: true\n", "1: 2\n", "null: 3\n"])
def test_a_yaml_key_that_is_not_text_is_bad_input(text, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    _fails(["train", str(cfg)], capsys, 2, "keys that are flag names")


@pytest.mark.parametrize("flag,value", [("--epochs", "inf"), ("--lr", "nan"), ("--alpha", "inf")])
def test_non_finite_numbers_are_refused_before_a_run_directory_exists(
    flag, value, tiny_llama_dir, qa_file, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_llama_dir), "--data", str(qa_file), "--output", str(out)]
    _fails([*argv, flag, value], capsys, 2, "finite number")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,words",
    [
        (["chat", "runs/x", "--max-new-tokens", "0"], ["--max-new-tokens", "integer >= 1"]),
        (["eval", "runs/x", "--batch-size", "-1"], ["--batch-size", ">= 1"]),
        (["plan", "--seq-len", "0"], ["--seq-len"]),
        (["clean", "a.jsonl", "-o", "b.jsonl", "--eval-share", "nan"], ["finite number"]),
        (["plan", "--gpu", "0GB"], ["'gpu'", "above 0"]),
        (["plan", "--gpu", "0"], ["'gpu'", "above 0"]),
    ],
)
def test_absurd_numbers_are_usage_errors(argv, words, capsys):
    _fails(argv, capsys, 2, *words)


# -- outputs checked before the work --------------------------------------------------------
def test_clean_into_an_existing_directory_fails_before_reading(qa_file, tmp_path, capsys):
    (tmp_path / "outdir").mkdir()
    before = _snapshot(tmp_path)
    _fails(["clean", str(qa_file), "-o", str(tmp_path / "outdir")], capsys, 2, "existing directory")
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "clean_report.json").exists()


# -- damaged models and adapters ------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_model_is_bad_input(tiny_llama_dir, qa_file, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    _truncate(model / "model.safetensors")
    out = tmp_path / "run"
    argv = ["train", "--model", str(model), "--data", str(qa_file), "--output", str(out)]
    _fails([*argv, "--max-steps", "1"], capsys, 2, "damaged or truncated")
    assert not out.exists()


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory):
    from tests.reliability.conftest import qa_records

    root = tmp_path_factory.mktemp("trained")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa_records()))
    run = root / "run"
    argv = ["train", "--model", str(tiny_llama_dir), "--data", str(data), "--output", str(run),
            "--max-steps", "1", "--skip-base-eval", "--eval-limit", "2", "--max-new-tokens", "2"]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.mark.parametrize(
    "command",
    [["chat", "{run}", "--prompt", "hi"], ["eval", "{run}"], ["merge", "{run}", "-o", "{tmp}/m"],
     ["export", "{run}", "--format", "gguf", "-o", "{tmp}/x.gguf"]],
)  # fmt: skip
def test_a_truncated_adapter_is_bad_input(command, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _truncate(run / "adapter" / "adapter_model.safetensors")
    argv = [a.format(run=run, tmp=tmp_path) for a in command]
    _fails(argv, capsys, 2, "adapter_model.safetensors", "not a readable safetensors file")
    assert not (tmp_path / "m").exists() and not (tmp_path / "x.gguf").exists()


# -- full disks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command,what",
    [(["export", "{run}", "--format", "gguf", "-o", "{tmp}/x.gguf"], "GGUF file"),
     (["export", "{run}", "--format", "peft", "-o", "{tmp}/p"], "adapter"),
     (["merge", "{run}", "-o", "{tmp}/m"], "merged model")],
)  # fmt: skip
def test_an_export_onto_a_full_disk_fails_up_front(
    command, what, trained_run, tmp_path, monkeypatch, capsys
):
    from tunesmith import disk

    monkeypatch.setattr(disk, "DISK_MARGIN_BYTES", 10**18)  # more than any disk has free
    argv = [a.format(run=trained_run, tmp=tmp_path) for a in command]
    _fails(argv, capsys, 1, f"not enough free disk to save the {what}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_disk_that_fills_mid_write_is_one_failure(tmp_path):
    import errno

    from tunesmith.atomic import atomic_path
    from tunesmith.errors import WorkFailed

    with (
        pytest.raises(WorkFailed, match="disk filled up while writing"),
        atomic_path(tmp_path / "big.bin"),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# -- the safety net -------------------------------------------------------------------------
def test_an_unexpected_error_is_one_line_with_the_step_and_a_saved_traceback(
    tiny_llama_dir, qa_file, tmp_path, monkeypatch, capsys
):
    import tunesmith.train.run as run_mod

    def broken(*args, **kwargs):
        raise RuntimeError("something no one mapped")

    monkeypatch.setattr(run_mod, "build_model", broken)
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_llama_dir), "--data", str(qa_file), "--output", str(out)]
    last = _fails(argv, capsys, 1, "failed while loading the model", "RuntimeError", "--debug")
    log = Path(re.search(r"the traceback is in (\S+)", last).group(1))
    assert log.parent == tmp_path / "cache" / "logs"
    assert "something no one mapped" in log.read_text() and "Traceback" in log.read_text()
    assert not out.exists()  # the new run's directory went with it
    with pytest.raises(RuntimeError):
        main(["--debug", "train", *argv[1:]])
