"""bench dpo: the token count both sides share, the headline ratios, the child runner."""

from __future__ import annotations

import math

import pytest

from tunesmith.bench.dpo.data import prepare_pairs, read_pairs
from tunesmith.bench.dpo.measure import DpoSettings, completion_tokens, pair_tokens
from tunesmith.bench.dpo.runner import CHILD
from tunesmith.bench.dpo.summary import FINAL_KEYS, final_lines, parse_final_lines, summarize
from tunesmith.bench.train.runner import run_child

trl = pytest.importorskip("trl", minversion="1.16")


def test_completion_tokens_stop_at_the_last_end_of_turn():
    assert completion_tokens([5, 6, 2, 198], eos_id=2) == 3  # TRL's trailing template newline
    assert completion_tokens([5, 6, 2], eos_id=2) == 3
    assert completion_tokens([5, 6], eos_id=2) == 2  # truncated before its end of turn
    assert pair_tokens([5, 2, 198], [7, 8, 2], eos_id=2) == 5


@pytest.fixture(scope="module")
def pairs_data(tiny_llama_dir, tmp_path_factory):
    settings = DpoSettings(model=str(tiny_llama_dir), steps=2, batch_size=2, seq_len=256)
    return settings, prepare_pairs(tmp_path_factory.mktemp("dpo-data"), settings)


def test_both_sides_count_the_same_tokens_for_the_same_pairs(pairs_data, tmp_path):
    """tunesmith's tokenization and TRL's DPOTrainer's differ by the newline after <|im_end|>;
    the bench's count is the same for both."""
    from datasets import Dataset
    from peft import LoraConfig

    from tunesmith.bench.dpo.trl_side import dpo_config
    from tunesmith.models import load_model_and_tokenizer
    from tunesmith.train.pref_steps import tokenize_preferences

    settings, data = pairs_data
    model, tok, _ = load_model_and_tokenizer(settings.model)
    records = read_pairs(data["pairs"])
    assert len(records) == settings.n_pairs
    ours = tokenize_preferences(tok, records, settings.seq_len)
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in Path(data["pairs"]).read_text().splitlines()]
    trainer = trl.DPOTrainer(
        model=model,
        args=dpo_config(settings, tmp_path / "trl", tuned=False),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    theirs = [trainer.train_dataset[i] for i in range(len(rows))]
    eos = tok.eos_token_id
    for o, t in zip(ours, theirs, strict=True):
        assert o.prompt == t["prompt_ids"]
        assert pair_tokens(o.chosen, o.rejected, eos) == pair_tokens(
            t["chosen_ids"], t["rejected_ids"], eos
        )
        # What each trains on: TRL one token more per completion (the template's newline).
        assert len(t["chosen_ids"]) + len(t["rejected_ids"]) >= len(o.chosen) + len(o.rejected)


def _row(variant, tps, rss, rep=0):
    return {"variant": variant, "rep": rep, "tokens_per_s": tps, "peak_rss_bytes": rss}


def test_summary_medians_and_final_lines():
    rows = [
        _row("tunesmith", 300.0, 800, 0),
        _row("tunesmith", 100.0, 700, 1),  # a disturbed round: the median ignores it
        _row("tunesmith", 310.0, 800, 2),
        _row("trl-default", 100.0, 1000),
        _row("trl-tuned", 200.0, 900),
    ]
    for r in rows:
        r["ceiling_ratio"] = 0.0
    summary = summarize(rows)
    assert summary == pytest.approx(
        {"speedup_vs_trl_default": 3.0, "speedup_vs_trl_tuned": 1.5, "peak_rss_ratio": 0.8}
    )
    lines = final_lines(summary)
    assert [line.split("=")[0] for line in lines] == list(FINAL_KEYS)
    assert parse_final_lines("table\nmachine: x\n" + "\n".join(lines)) == pytest.approx(summary)


@pytest.mark.slow
def test_child_runner_tunesmith_and_trl_default(pairs_data, tmp_path):
    settings, data = pairs_data
    rows = [
        run_child(v, settings, data, tmp_path / v, timeout_s=300, module=CHILD)
        for v in ("tunesmith", "trl-default")
    ]
    ours, theirs = rows
    assert (ours["gradient_checkpointing"], theirs["gradient_checkpointing"]) == (False, True)
    assert theirs["precision"] == "fp32"  # DPOConfig on a CPU, as a user must set it
    for row in rows:
        assert row["timed_steps"] == 1 and len(row["losses"]) == 2  # step 1 is the warm-up
        assert 0 < row["trained_tokens"] < row["processed_tokens"]  # prompts are not trained
        assert row["tokens_per_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["trained_tokens"] / row["wall_s"])
        assert row["peak_rss_bytes"] > 100 * 2**20
        # Near-untrained: the DPO loss starts at ln 2, the policy equal to its reference.
        assert math.isfinite(row["final_train_loss"])
        assert abs(row["final_train_loss"] - math.log(2)) < 0.1
    parsed = parse_final_lines("\n".join(final_lines(summarize(rows))))
    assert parsed["speedup_vs_trl_default"] == pytest.approx(
        ours["tokens_per_s"] / theirs["tokens_per_s"], rel=2e-3, abs=1e-3
    )
    assert math.isnan(parsed["speedup_vs_trl_tuned"])  # not run here
