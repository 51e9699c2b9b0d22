"""Bad input never costs a user anything: exit 2, one readable message, nothing half-written.

Each case builds its bad input in a fresh temp dir and runs the real CLI on the tiny Llama.
Every case asserts the exit code, the message's key words (the key, the value, what is
allowed), no traceback, and that no run directory (or no change to a pre-existing one) is
left behind. tests/commands/test_train_cli.py covers missing data, an unknown model, an
unknown method, a negative lr, rank 0 and a malformed JSONL line; these are the others.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunesmith.cli import main

pytestmark = pytest.mark.xdist_group("tiny-e2e")


@dataclass
class Ctx:
    tmp: Path
    model: Path  # the tiny Llama checkpoint (max_position_embeddings 512, k/v width 32)
    data: Path  # a small valid data file
    out: Path  # the --output every case uses unless it sets its own

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def model_copy(self, name: str, drop: tuple[str, ...] = ()) -> Path:
        target = self.tmp / name
        shutil.copytree(self.model, target, ignore=shutil.ignore_patterns(*drop))
        return target


def _empty_dir(ctx: Ctx) -> Path:
    (ctx.tmp / "empty").mkdir(exist_ok=True)
    return ctx.tmp / "empty"


def _yaml(ctx: Ctx, text: str) -> list[str]:
    return [str(ctx.write("config.yaml", text))]


def _unfinished_run(ctx: Ctx) -> list[str]:
    (ctx.out / "checkpoints" / "step-2").mkdir(parents=True)
    (ctx.out / "config.yaml").write_text("model: x\n")
    return []


def _foreign_output_dir(ctx: Ctx) -> list[str]:
    ctx.out.mkdir()
    (ctx.out / "notes.txt").write_text("mine")
    return []


def _resume_all_corrupt(ctx: Ctx) -> list[str]:
    from tunesmith.config import make_config, to_yaml

    run = ctx.tmp / "old-run"
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(make_config({"model": str(ctx.model)})))
    (run / "checkpoints" / "step-4" / "manifest.json").write_text('{"files": {"x.pt": "00"}}')
    return ["--resume", str(run)]


def _pickle_only_model(ctx: Ctx) -> list[str]:
    import torch
    from safetensors.torch import load_file

    target = ctx.model_copy("pickled", drop=("*.safetensors",))
    # The old way: a pickled pytorch_model.bin and no safetensors.
    torch.save(load_file(str(ctx.model / "model.safetensors")), target / "pytorch_model.bin")
    return ["--model", str(target), "--data", str(ctx.data), "--max-steps", "1"]


def _huge_model(ctx: Ctx) -> list[str]:
    # A 70B-class config with no weights at all: the plan must refuse before any load.
    target = ctx.model_copy("huge", drop=("*.safetensors",))
    cfg = json.loads((target / "config.json").read_text())
    cfg.update(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
               num_attention_heads=64, num_key_value_heads=8)  # fmt: skip
    (target / "config.json").write_text(json.dumps(cfg))
    return ["--model", str(target), "--data", str(ctx.data)]


def _too_long_records(ctx: Ctx) -> list[str]:
    rows = [{"instruction": f"Question {i}: " + "word " * 40, "output": "x"} for i in range(5)]
    data = ctx.write("long.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return ["--data", str(data), "--seq-len", "16"]


# name -> (argv after `train` given the context, key words the message must contain)
CASES: dict[str, tuple[Callable[[Ctx], list[str]], list[str]]] = {
    # config files
    "yaml-unknown-key": (lambda c: _yaml(c, "lerning-rate: 0.1\n"), ["lerning-rate", "known key"]),
    "yaml-misspelt-key": (
        lambda c: _yaml(c, "max-step: 3\n"), ["'max-step'", "did you mean 'max-steps'?"],
    ),
    "yaml-wrong-type": (lambda c: _yaml(c, "rank: eight\n"), ["'rank'", "eight", "integer"]),
    "yaml-bad-method": (lambda c: _yaml(c, "method: adapterx\n"), ["method", "adapterx", "lora"]),
    "yaml-not-a-mapping": (lambda c: _yaml(c, "- lora\n- 8\n"), ["mapping"]),
    "yaml-syntax": (lambda c: _yaml(c, "rank: [1,\n"), ["config.yaml:2", "invalid YAML"]),
    "yaml-data-wrong-type": (lambda c: _yaml(c, "data: {a: 1}\n"), ["'data'", "list"]),
    "config-file-missing": (lambda c: [str(c.tmp / "nope.yaml")], ["config file not found"]),
    # flags
    "unknown-flag": (lambda c: ["--lerning-rate", "1"], ["unrecognized arguments"]),
    "flag-wrong-type": (lambda c: ["--batch-size", "eight"], ["--batch-size", "invalid int"]),
    "lr-too-large": (lambda c: ["--lr", "5"], ["'lr'", "5", "less than or equal to 1"]),
    "dropout-above-1": (lambda c: ["--dropout", "1.5"], ["'dropout'", "1.5", "less than 1"]),
    "batch-size-0": (lambda c: ["--batch-size", "0"], ["'batch-size'", "greater than or equal"]),
    "grad-accum-0": (lambda c: ["--grad-accum", "0"], ["'grad-accum'", "0"]),
    "warmup-ratio-1": (lambda c: ["--warmup-ratio", "1"], ["'warmup-ratio'", "less than 1"]),
    "epochs-0": (lambda c: ["--epochs", "0"], ["'epochs'", "greater than 0"]),
    "max-grad-norm-0": (lambda c: ["--max-grad-norm", "0"], ["'max-grad-norm'"]),
    "precision-choice": (lambda c: ["--precision", "fp8"], ["--precision", "fp8", "bf16"]),
    "on-nan-choice": (lambda c: ["--on-nan", "ignore"], ["--on-nan", "ignore", "skip"]),
    "eval-limit-0": (lambda c: ["--eval-limit", "0"], ["'eval-limit'"]),
    "seq-len-below-8": (lambda c: ["--seq-len", "4"], ["'seq-len'", "4"]),
    # checked against the model's config, before any weight loads
    "seq-len-beyond-context": (
        lambda c: ["--seq-len", "4096"], ["'seq-len'", "4096", "512", "max_position_embeddings"],
    ),
    "rank-above-layer": (lambda c: ["--rank", "64"], ["'rank'", "64", "at most 32", "k_proj"]),
    "target-absent": (lambda c: ["--target", "wq,wv"], ["'target'", "wq,wv", "q_proj"]),
    "target-empty": (lambda c: ["--target", ","], ["'target'", "preset"]),
    "does-not-fit": (_huge_model, ["does not fit", "GiB", "Recommended", "--force"]),
    # paths
    "data-is-empty-directory": (
        lambda c: ["--data", str(_empty_dir(c))], ["'data'", "holds neither"],
    ),
    "eval-data-missing": (
        lambda c: ["--data", str(c.data), "--eval-data", str(c.tmp / "ev.jsonl")],
        ["data file not found", "ev.jsonl"],
    ),
    "output-is-a-file": (
        lambda c: ["--output", str(c.write("taken.txt", "keep me"))], ["'output'", "existing file"],
    ),
    "output-under-a-file": (
        lambda c: ["--output", str(c.write("f.txt", "keep me")) + "/run"], ["'output'", "is a file"],
    ),
    "output-not-empty": (_foreign_output_dir, ["not empty", "--overwrite"]),
    "output-unfinished-run": (_unfinished_run, ["unfinished run", "--resume"]),
    "resume-not-a-run": (lambda c: ["--resume", str(c.tmp)], ["not a tunesmith run directory"]),
    "resume-with-flags": (lambda c: ["--resume", str(c.tmp), "--max-steps", "9"], ["saved config", "--max-steps"]),
    "resume-all-checkpoints-corrupt": (_resume_all_corrupt, ["no valid checkpoint"]),
    # models
    "model-dir-without-config": (lambda c: ["--model", str(c.tmp)], ["no config.json"]),
    "model-is-a-file": (lambda c: ["--model", str(c.data)], ["is a file", "--model"]),
    "gguf-missing": (lambda c: ["--model", str(c.tmp / "m.gguf")], ["model file not found"]),
    "pickled-weights-refused": (_pickle_only_model, ["--allow-pickle"]),
    # data files
    "data-empty": (lambda c: ["--data", str(c.write("e.jsonl", ""))], ["no records"]),
    "data-unknown-format": (
        lambda c: ["--data", str(c.write("u.jsonl", '{"foo": 1}\n{"bar": 2}\n'))],
        ["no valid records", "u.jsonl:1", "instruction"],
    ),
    "data-csv-wrong-columns": (
        lambda c: ["--data", str(c.write("w.csv", "a,b\n1,2\n"))], ["w.csv", "unknown format"],
    ),
    "data-json-array-unclosed": (
        lambda c: ["--data", str(c.write("b.json", '[{"instruction": "x", "output": "y"},'))],
        ["b.json", "not closed"],
    ),
    "data-all-too-long": (_too_long_records, ["no training records left"]),
}  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_message_and_leaves_nothing(name, tiny_llama_dir, tmp_path, capsys):
    build, words = CASES[name]
    data = tmp_path / "qa.jsonl"
    from tests.reliability.conftest import qa_records

    data.write_text("".join(json.dumps(r) + "\n" for r in qa_records()))
    ctx = Ctx(tmp=tmp_path, model=tiny_llama_dir, data=data, out=tmp_path / "run")
    argv = build(ctx)
    # --resume replays the saved config and refuses other flags, so add none to it.
    if "--model" not in argv and "--resume" not in argv:
        argv += ["--model", str(tiny_llama_dir)]
    if "--output" not in argv and "--resume" not in argv:
        argv += ["--output", str(ctx.out)]
    existed = ctx.out.exists()
    before = _snapshot(tmp_path)

    code = main(["train", *argv])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # One readable message last (argparse prints its usage before it).
    assert re.match(r"tunesmith( train)?: error: ", err.strip().splitlines()[-1]), err
    for w in words:
        assert w in err, f"{w!r} not in: {err}"
    # Nothing written: no new run directory, and every pre-existing file exactly as it was.
    assert ctx.out.exists() == existed
    assert _snapshot(tmp_path) == before
