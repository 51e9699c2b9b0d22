"""Shared inputs of the reliability tests: a small clean data file and run-dir helpers."""

from __future__ import annotations

import json

import pytest


def qa_records(n: int = 24) -> list[dict]:
    """Distinct question/answer records (no near-duplicates for the cleaner to drop)."""
    cities = ["Lyon", "Paris", "Nice", "Lille", "Brest", "Dijon"]
    cols = ["name", "city", "birth_year", "doctor_id"]
    return [
        {
            "instruction": f"List the {cols[i % 4]} of patients from {cities[i % 6]} (query {i}).",
            "output": f"SELECT {cols[i % 4]} FROM patients WHERE city = '{cities[i % 6]}' "
            f"LIMIT {i + 1};",
        }
        for i in range(n)
    ]


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_records()))
    return path


def make_loop(run_dir, model=None, **overrides):
    """A TrainLoop over the tiny LoRA Llama of tests/train (dropout 0, constant lr, seed 3)."""
    import torch

    from tests.tiny import make_tokenizer
    from tests.train.test_loop import _examples, _lora_model
    from tunesmith.train.loop import LoopSettings, TrainLoop

    tok = make_tokenizer()
    settings = dict(max_steps=6, batch_size=4, lr=1e-2, logging_steps=1, warmup_ratio=0.0,
                    lr_scheduler="constant", seed=3)  # fmt: skip
    settings.update(overrides)
    model = model if model is not None else _lora_model()
    return TrainLoop(
        model, _examples(tok), tok.pad_token_id, LoopSettings(**settings), run_dir,
        torch.device("cpu"),
    )  # fmt: skip
